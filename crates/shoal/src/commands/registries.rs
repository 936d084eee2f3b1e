//! `shoal registry add|ls|rm`: how nodes reach registries, and who they
//! are there.

use std::io::{BufRead, Read};
use std::process::ExitCode;

use anyhow::Context;
use shoal_api::wire::{RegistryAdd, RegistryView};
use zeroize::Zeroizing;

use crate::cli::{Format, RegistryCommand};
use crate::output::{print_json, print_list, since};

/// Longest password line read from stdin.
const PASSWORD_BYTES_MAX: usize = 1024;

pub async fn run(command: RegistryCommand) -> anyhow::Result<ExitCode> {
    match command {
        RegistryCommand::Add {
            host,
            insecure,
            ca_file,
            username,
            password_stdin,
            password_secret,
            output,
            target,
        } => {
            let ca_pem = match &ca_file {
                Some(path) => Some(
                    std::fs::read_to_string(path)
                        .with_context(|| format!("--ca-file {}", path.display()))?,
                ),
                None => None,
            };
            let password = if password_stdin {
                Some(read_password()?)
            } else {
                None
            };
            let request = RegistryAdd {
                host,
                insecure,
                ca_pem,
                username,
                password: password.as_ref().map(|p| p.to_string()),
                password_secret,
            };
            let view = super::client(&target)?.add_registry(&request).await?;
            print(output.format, &[view])
        }
        RegistryCommand::Ls(args) => {
            let registries = super::client(&args.target)?.registries().await?;
            print(args.output.format, &registries)
        }
        RegistryCommand::Rm { host, target } => {
            super::client(&target)?.remove_registry(&host).await?;
            println!("registry {host} forgotten");
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// One line from stdin, without its line ending; kept out of the
/// command line (and so out of `ps` and shell history).
fn read_password() -> anyhow::Result<Zeroizing<String>> {
    let mut line = Zeroizing::new(String::new());
    let read = std::io::stdin()
        .lock()
        .take(PASSWORD_BYTES_MAX as u64 + 2)
        .read_line(&mut line)
        .context("reading the password from stdin")?;
    let password = Zeroizing::new(line.trim_end_matches(['\r', '\n']).to_string());
    if read == 0 || password.is_empty() {
        anyhow::bail!("--password-stdin: stdin gave no password; e.g. `echo \"$PASSWORD\" | shoal registry add …`");
    }
    if password.len() > PASSWORD_BYTES_MAX {
        anyhow::bail!("--password-stdin: longer than {PASSWORD_BYTES_MAX} bytes");
    }
    Ok(password)
}

fn print(format: Format, registries: &[RegistryView]) -> anyhow::Result<ExitCode> {
    if format == Format::Json {
        print_json(&registries)?;
        return Ok(ExitCode::SUCCESS);
    }
    let rows = registries
        .iter()
        .map(|r| {
            vec![
                r.host.clone(),
                if r.insecure { "http allowed" } else { "https" }.to_string(),
                if r.ca { "own CA" } else { "" }.to_string(),
                match (&r.username, r.password, &r.password_secret) {
                    (Some(user), true, Some(secret)) => {
                        format!("{user} (password: secret {secret})")
                    }
                    (Some(user), true, None) => format!("{user} (password sealed)"),
                    _ => String::new(),
                },
                since(r.updated_at_ms),
            ]
        })
        .collect();
    print_list(
        format,
        registries,
        &["HOST", "TRANSPORT", "CA", "CREDENTIALS", "UPDATED"],
        rows,
    )?;
    Ok(ExitCode::SUCCESS)
}
