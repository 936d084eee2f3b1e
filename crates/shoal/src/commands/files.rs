//! `shoal secret|config create|update|ls|rm`: named values services get
//! as files.

use std::io::Read;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use base64::Engine;
use shoal_api::wire::{FileCreate, FileUpdate, FileView};
use shoal_types::FileKind;
use zeroize::Zeroizing;

use crate::cli::{FileCommand, Format};
use crate::output::{bytes, print_json, print_list, since};

/// Largest value, as the cluster takes it.
const VALUE_BYTES_MAX: u64 = shoal_state::files::FILE_BYTES_MAX as u64;

pub async fn run(kind: FileKind, command: FileCommand) -> anyhow::Result<ExitCode> {
    let route = kind.field();
    // Checked here too: the name goes into the URL.
    if let FileCommand::Create { name, .. }
    | FileCommand::Update { name, .. }
    | FileCommand::Rm { name, .. } = &command
    {
        shoal_types::check_object_name(name).map_err(|why| anyhow::anyhow!("NAME: {why}"))?;
    }
    match command {
        FileCommand::Create {
            name,
            file,
            output,
            target,
        } => {
            let data = read_value(&file)?;
            let request = FileCreate {
                name,
                data: data.to_string(),
            };
            let view = super::client(&target)?.create_file(route, &request).await?;
            print(output.format, &[view])
        }
        FileCommand::Update {
            name,
            file,
            output,
            target,
        } => {
            let data = read_value(&file)?;
            let request = FileUpdate {
                data: data.to_string(),
            };
            let view = super::client(&target)?
                .update_file(route, &name, &request)
                .await?;
            print(output.format, &[view])
        }
        FileCommand::Ls(args) => {
            let files = super::client(&args.target)?.files(route).await?;
            print(args.output.format, &files)
        }
        FileCommand::Rm { name, target } => {
            super::client(&target)?.remove_file(route, &name).await?;
            println!("{kind} {name} removed");
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The value in `path` (`-`: stdin), base64-encoded, checked for size
/// before anything is sent.
fn read_value(path: &Path) -> anyhow::Result<Zeroizing<String>> {
    let mut value = Zeroizing::new(Vec::new());
    let shown = path.display();
    let read = if path == Path::new("-") {
        std::io::stdin()
            .lock()
            .take(VALUE_BYTES_MAX + 1)
            .read_to_end(&mut value)
            .context("-f -: reading the value from stdin")?
    } else {
        std::fs::File::open(path)
            .with_context(|| format!("-f {shown}"))?
            .take(VALUE_BYTES_MAX + 1)
            .read_to_end(&mut value)
            .with_context(|| format!("-f {shown}"))?
    };
    if read as u64 > VALUE_BYTES_MAX {
        anyhow::bail!("-f {shown}: larger than {VALUE_BYTES_MAX} bytes, the most a value may have");
    }
    Ok(Zeroizing::new(
        base64::engine::general_purpose::STANDARD.encode(&*value),
    ))
}

fn print(format: Format, files: &[FileView]) -> anyhow::Result<ExitCode> {
    if format == Format::Json {
        print_json(&files)?;
        return Ok(ExitCode::SUCCESS);
    }
    let rows = files
        .iter()
        .map(|file| {
            vec![
                file.name.clone(),
                file.version.to_string(),
                bytes(file.bytes),
                if file.used_by.is_empty() {
                    "-".to_string()
                } else {
                    file.used_by.join(",")
                },
                since(file.updated_at_ms),
            ]
        })
        .collect();
    print_list(
        format,
        files,
        &["NAME", "VERSION", "SIZE", "USED BY", "UPDATED"],
        rows,
    )?;
    Ok(ExitCode::SUCCESS)
}
