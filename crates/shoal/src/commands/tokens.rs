//! `shoal token …`, `shoal cluster token …` and `shoal context …`: API
//! tokens, join tokens, and which credential the CLI uses.

use std::process::ExitCode;

use shoal_api::wire::{JoinTokenCreate, TokenCreate};

use crate::cli::{ContextCommand, Format, JoinTokenCommand, TokenCommand};
use crate::output::{print_json, print_list, since};

fn when(at_ms: Option<u64>) -> String {
    match at_ms {
        None => "never".into(),
        Some(at) => humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + std::time::Duration::from_millis(at),
        )
        .to_string(),
    }
}

pub async fn api(command: TokenCommand) -> anyhow::Result<ExitCode> {
    match command {
        TokenCommand::Create {
            name,
            role,
            ttl,
            output,
            target,
        } => {
            let created = super::client(&target)?
                .create_token(&TokenCreate {
                    name,
                    role,
                    ttl_s: ttl.map(|ttl| ttl.as_secs().max(1)),
                })
                .await?;
            match output.format {
                Format::Json => print_json(&created)?,
                Format::Table => {
                    println!("{}", created.token);
                    eprintln!(
                        "API token {} ({}), shown only now: keep it like a password (SHOAL_TOKEN, or a context of your shoal config)",
                        created.view.id, created.view.role
                    );
                }
            }
        }
        TokenCommand::Ls(args) => {
            let tokens = super::client(&args.target)?.tokens().await?;
            let rows = tokens
                .iter()
                .map(|t| {
                    vec![
                        t.id.clone(),
                        t.name.clone(),
                        t.role.clone(),
                        since(t.created_at_ms),
                        when(t.expires_at_ms),
                        t.created_by.clone(),
                    ]
                })
                .collect();
            print_list(
                args.output.format,
                &tokens,
                &["ID", "NAME", "ROLE", "CREATED", "EXPIRES", "BY"],
                rows,
            )?;
        }
        TokenCommand::Rm { id, target } => {
            super::client(&target)?.remove_token(&id).await?;
            println!("API token {id} revoked");
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn join(command: JoinTokenCommand) -> anyhow::Result<ExitCode> {
    match command {
        JoinTokenCommand::Create {
            role,
            ttl,
            uses,
            output,
            target,
        } => {
            let created = super::client(&target)?
                .create_join_token(&JoinTokenCreate {
                    role,
                    ttl_s: Some(ttl.as_secs().max(1)),
                    uses: Some(uses),
                })
                .await?;
            match output.format {
                Format::Json => print_json(&created)?,
                Format::Table => {
                    println!("{}", created.token);
                    eprintln!(
                        "join token {} ({}, {} use(s), until {}): shoal agent --peer ADDR --token TOKEN",
                        created.view.id,
                        created.view.role,
                        created.view.uses_max,
                        when(Some(created.view.expires_at_ms))
                    );
                }
            }
        }
        JoinTokenCommand::Ls(args) => {
            let tokens = super::client(&args.target)?.join_tokens().await?;
            let rows = tokens
                .iter()
                .map(|t| {
                    vec![
                        t.id.clone(),
                        t.role.clone(),
                        t.state.clone(),
                        format!("{}/{}", t.uses, t.uses_max),
                        when(Some(t.expires_at_ms)),
                        t.created_by.clone(),
                    ]
                })
                .collect();
            print_list(
                args.output.format,
                &tokens,
                &["ID", "ROLE", "STATE", "USES", "EXPIRES", "BY"],
                rows,
            )?;
        }
        JoinTokenCommand::Rm { id, target } => {
            super::client(&target)?.revoke_join_token(&id).await?;
            println!("join token {id} revoked");
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn context(command: ContextCommand) -> anyhow::Result<ExitCode> {
    match command {
        ContextCommand::Ls { config } => {
            let path = crate::config::path(config.as_deref());
            let file = crate::config::load_file(&path)?;
            for (name, credential) in &file.contexts {
                let mark = if file.current.as_deref() == Some(name) {
                    "*"
                } else {
                    " "
                };
                println!("{mark} {name}\t{}", credential.addr);
            }
            if file.contexts.is_empty() {
                eprintln!("no contexts in {}", path.display());
            }
        }
        ContextCommand::Use { name, config } => {
            let path = crate::config::path(config.as_deref());
            let mut file = crate::config::load_file(&path)?;
            anyhow::ensure!(
                file.contexts.contains_key(&name),
                "no context `{name}` in {}; see `shoal context ls`",
                path.display()
            );
            file.current = Some(name.clone());
            crate::config::save_file(&path, &file)?;
            println!("context {name} is current");
        }
        ContextCommand::Add { name, from, config } => {
            let credential = crate::config::credential(Some(&from), None)?;
            let path = crate::config::path(config.as_deref());
            let mut file = crate::config::load_file(&path)?;
            file.contexts.insert(name.clone(), credential);
            file.current = Some(name.clone());
            crate::config::save_file(&path, &file)?;
            println!("context {name} added to {} and current", path.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}
