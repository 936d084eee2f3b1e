use std::process::ExitCode;

use anyhow::Context;

use crate::cli::{ImportArgs, ListArgs, PackArgs, PullArgs};
use crate::clock::now_ms;
use crate::output::{age, bytes, print_list};

pub async fn list(args: ListArgs) -> anyhow::Result<ExitCode> {
    let images = super::client(&args.target)?.images().await?;
    print(args.output.format, &images)
}

fn print(
    format: crate::cli::Format,
    images: &[shoal_api::wire::ImageView],
) -> anyhow::Result<ExitCode> {
    let now_s = (now_ms() / 1000) as i64;
    let rows = images
        .iter()
        .map(|image| {
            vec![
                image.name.clone(),
                image.digest.chars().take(19).collect(),
                bytes(image.size_bytes),
                image
                    .created_s
                    .map(|created| {
                        format!("{} ago", age(now_s.saturating_sub(created).max(0) as u64))
                    })
                    .unwrap_or_default(),
            ]
        })
        .collect();
    print_list(format, images, &["NAME", "DIGEST", "SIZE", "CREATED"], rows)?;
    Ok(ExitCode::SUCCESS)
}

pub async fn pull(args: PullArgs) -> anyhow::Result<ExitCode> {
    let image = super::client(&args.target)?
        .pull_image(&args.reference)
        .await?;
    print(args.output.format, &[image])
}

pub async fn pack(args: PackArgs) -> anyhow::Result<ExitCode> {
    if !args.rootfs.is_dir() {
        anyhow::bail!("--rootfs {}: not a directory", args.rootfs.display());
    }
    let (rootfs, name, output) = (args.rootfs, args.name, args.output);
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let file = std::fs::File::create(&output)
            .with_context(|| format!("--output {}", output.display()))?;
        shoal_runtime::image::write_rootfs_layout(&rootfs, &name, std::io::BufWriter::new(file))?;
        eprintln!("wrote {} ({name})", output.display());
        Ok(())
    })
    .await??;
    Ok(ExitCode::SUCCESS)
}

pub async fn import(args: ImportArgs) -> anyhow::Result<ExitCode> {
    let client = super::client(&args.target)?;
    let images = match (&args.rootfs, &args.file) {
        (Some(rootfs), _) => {
            let name = args
                .name
                .as_deref()
                .context("--rootfs needs --name NAME:TAG")?;
            if !rootfs.is_dir() {
                anyhow::bail!("--rootfs {}: not a directory", rootfs.display());
            }
            let archive = tempfile::NamedTempFile::new().context("creating a temporary file")?;
            let (rootfs, name_owned, path) = (
                rootfs.clone(),
                name.to_string(),
                archive.path().to_path_buf(),
            );
            tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
                let file = std::fs::File::create(&path)?;
                shoal_runtime::image::write_rootfs_layout(
                    &rootfs,
                    &name_owned,
                    std::io::BufWriter::new(file),
                )?;
                Ok(())
            })
            .await??;
            client.import_image(archive.path(), Some(name)).await?
        }
        (None, Some(file)) => client.import_image(file, args.name.as_deref()).await?,
        (None, None) => anyhow::bail!("give a tarball to import, or --rootfs DIR --name NAME:TAG"),
    };
    print(args.output.format, &images)
}
