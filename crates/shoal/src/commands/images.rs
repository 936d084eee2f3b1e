use std::process::ExitCode;

use anyhow::Context;
use futures::StreamExt;
use serde::Serialize;
use shoal_api::client::{Client, ClientError};
use shoal_api::wire::ImageView;

use crate::cli::{ImageRmArgs, ImagesArgs, ImportArgs, NodeSelection, PackArgs, PullArgs, Target};
use crate::clock::now_ms;
use crate::output::{age, bytes, print_list};

/// Nodes asked at once by a command over several nodes.
const NODES_IN_FLIGHT_MAX: usize = 8;
/// How often a pull's progress is asked while `shoal image pull` waits.
const PULL_POLL_INTERVAL: std::time::Duration = std::time::Duration::from_millis(500);

/// An image on a named node, as `--node`/`--all-nodes` print it.
#[derive(Serialize)]
struct NodeImage<'a> {
    node: &'a str,
    #[serde(flatten)]
    image: &'a ImageView,
}

/// The nodes selected, each with a client to its own API; `None` when no
/// node was named (the answering node acts).
async fn selected(
    target: &Target,
    selection: &NodeSelection,
) -> anyhow::Result<Option<Vec<(String, Client)>>> {
    if selection.nodes.is_empty() && !selection.all_nodes {
        return Ok(None);
    }
    let nodes = super::client(target)?.nodes().await?;
    let mut chosen = Vec::new();
    if selection.all_nodes {
        for node in &nodes {
            if node.status == shoal_types::NodeStatus::Alive {
                chosen.push(node);
            } else {
                eprintln!("skipping {} ({})", node.name, node.status.as_str());
            }
        }
    } else {
        for name in &selection.nodes {
            let Some(node) = nodes.iter().find(|n| &n.name == name) else {
                let known: Vec<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
                anyhow::bail!(
                    "--node {name}: no such node; the cluster has {}",
                    known.join(", ")
                );
            };
            if node.status != shoal_types::NodeStatus::Alive {
                anyhow::bail!("--node {name}: the node is {}", node.status.as_str());
            }
            if !chosen
                .iter()
                .any(|c: &&shoal_api::wire::NodeView| c.name == node.name)
            {
                chosen.push(node);
            }
        }
    }
    let credential = crate::config::credential(target.config.as_deref(), target.addr.as_deref())?;
    chosen
        .into_iter()
        .map(|node| {
            let client = Client::from_credential(&credential, Some(&node.addr))?;
            Ok((node.name.clone(), client))
        })
        .collect::<anyhow::Result<Vec<_>>>()
        .map(Some)
}

/// `call` on every node given, [`NODES_IN_FLIGHT_MAX`] at once; the
/// answers in the order of the node names.
async fn on_nodes<T, F, Fut>(
    clients: Vec<(String, Client)>,
    call: F,
) -> Vec<(String, Result<T, ClientError>)>
where
    F: Fn(Client) -> Fut,
    Fut: std::future::Future<Output = Result<T, ClientError>>,
{
    let mut answers: Vec<(String, Result<T, ClientError>)> =
        futures::stream::iter(clients.into_iter().map(|(name, client)| {
            let answer = call(client);
            async move { (name, answer.await) }
        }))
        .buffer_unordered(NODES_IN_FLIGHT_MAX)
        .collect()
        .await;
    answers.sort_by(|a, b| a.0.cmp(&b.0));
    answers
}

pub async fn list(args: ImagesArgs) -> anyhow::Result<ExitCode> {
    let table = args.output.format == crate::cli::Format::Table;
    let Some(clients) = selected(&args.target, &args.nodes).await? else {
        let client = super::client(&args.target)?;
        let images = client.images().await?;
        let code = print(args.output.format, &images)?;
        if table {
            // A node of an older release has no disk to show.
            if let Ok(disk) = client.image_disk().await {
                println!("\n{}", disk_line(&disk));
            }
        }
        return Ok(code);
    };
    let answers = on_nodes(
        clients.clone(),
        |client| async move { client.images().await },
    )
    .await;
    let code = print_per_node(args.output.format, &answers)?;
    if table {
        let disks = on_nodes(clients, |client| async move { client.image_disk().await }).await;
        println!();
        for (node, disk) in disks {
            if let Ok(disk) = disk {
                println!("{node}: {}", disk_line(&disk));
            }
        }
    }
    Ok(code)
}

/// `disk /var/lib/containerd: 43 % of 98.2 GiB used; …`
fn disk_line(disk: &shoal_api::wire::ImageDiskView) -> String {
    format!(
        "disk {}: {} % of {} used; images no app names are removed above {} %, down to {} %",
        disk.path,
        disk.used_percent,
        bytes(disk.total_bytes),
        disk.gc_high_percent,
        disk.gc_low_percent
    )
}

fn print(format: crate::cli::Format, images: &[ImageView]) -> anyhow::Result<ExitCode> {
    let rows = images.iter().map(row).collect();
    print_list(format, images, &["NAME", "DIGEST", "SIZE", "CREATED"], rows)?;
    Ok(ExitCode::SUCCESS)
}

fn row(image: &ImageView) -> Vec<String> {
    let now_s = (now_ms() / 1000) as i64;
    vec![
        image.name.clone(),
        image.digest.chars().take(19).collect(),
        bytes(image.size_bytes),
        image
            .created_s
            .map(|created| format!("{} ago", age(now_s.saturating_sub(created).max(0) as u64)))
            .unwrap_or_default(),
    ]
}

/// Images by node; a node that failed is said on stderr, and makes the
/// exit code 1 after the others are printed.
fn print_per_node(
    format: crate::cli::Format,
    answers: &[(String, Result<Vec<ImageView>, ClientError>)],
) -> anyhow::Result<ExitCode> {
    let mut items = Vec::new();
    let mut rows = Vec::new();
    let mut failed = false;
    for (node, answer) in answers {
        match answer {
            Ok(images) => {
                for image in images {
                    items.push(NodeImage { node, image });
                    let mut cells = vec![node.clone()];
                    cells.extend(row(image));
                    rows.push(cells);
                }
            }
            Err(error) => {
                failed = true;
                eprintln!("{node}: {error}");
            }
        }
    }
    print_list(
        format,
        &items,
        &["NODE", "NAME", "DIGEST", "SIZE", "CREATED"],
        rows,
    )?;
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

pub async fn pull(args: PullArgs) -> anyhow::Result<ExitCode> {
    // The name the image will have, to find its pull among the node's.
    let name = shoal_runtime::registry::ImageRef::parse(&args.reference)
        .map(|r| r.to_string())
        .unwrap_or_else(|_| args.reference.clone());
    let Some(clients) = selected(&args.target, &args.nodes).await? else {
        let client = super::client(&args.target)?;
        let watched = vec![(String::new(), client.clone())];
        let image = with_pull_bars(watched, &name, client.pull_image(&args.reference)).await?;
        return print(args.output.format, &[image]);
    };
    let reference = args.reference.as_str();
    let pulls = on_nodes(clients.clone(), |client| async move {
        client.pull_image(reference).await.map(|image| vec![image])
    });
    let answers = with_pull_bars(clients, &name, pulls).await;
    print_per_node(args.output.format, &answers)
}

/// Runs `work` while drawing a bar per node for its pull of `name` (on a
/// terminal; nothing otherwise), from each node's `GET /v1/images/pulls`.
async fn with_pull_bars<T>(
    nodes: Vec<(String, Client)>,
    name: &str,
    work: impl std::future::Future<Output = T>,
) -> T {
    use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
    let multi = MultiProgress::new();
    let style = ProgressStyle::with_template(
        "{prefix}[{bar:30}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec}",
    )
    .map(|style| style.progress_chars("=> "));
    let bars: Vec<ProgressBar> = nodes
        .iter()
        .map(|(node, _)| {
            let bar = multi.add(ProgressBar::new(0));
            if let Ok(style) = &style {
                bar.set_style(style.clone());
            }
            if !node.is_empty() {
                bar.set_prefix(format!("{node}: "));
            }
            bar
        })
        .collect();
    let watch = async {
        loop {
            tokio::time::sleep(PULL_POLL_INTERVAL).await;
            for ((_, client), bar) in nodes.iter().zip(&bars) {
                let Ok(Ok(pulls)) = tokio::time::timeout(PULL_POLL_INTERVAL, client.pulls()).await
                else {
                    continue;
                };
                if let Some(pull) = pulls.iter().find(|p| p.name == name) {
                    bar.set_length(pull.total_bytes);
                    bar.set_position(pull.done_bytes);
                }
            }
        }
    };
    tokio::pin!(work);
    tokio::pin!(watch);
    let out = match futures::future::select(work, watch).await {
        futures::future::Either::Left((out, _)) => out,
        futures::future::Either::Right(((), work)) => work.await,
    };
    for bar in &bars {
        bar.finish_and_clear();
    }
    out
}

pub async fn remove(args: ImageRmArgs) -> anyhow::Result<ExitCode> {
    let Some(clients) = selected(&args.target, &args.nodes).await? else {
        super::client(&args.target)?
            .remove_image(&args.name)
            .await?;
        println!("removed {}", args.name);
        return Ok(ExitCode::SUCCESS);
    };
    let name = args.name.as_str();
    let answers = on_nodes(
        clients,
        |client| async move { client.remove_image(name).await },
    )
    .await;
    let (mut removed, mut failed) = (0, false);
    for (node, answer) in &answers {
        match answer {
            Ok(()) => {
                removed += 1;
                println!("{node}: removed {name}");
            }
            // Over every node, one without the image is no failure.
            Err(ClientError::Api { status: 404, .. }) if args.nodes.all_nodes => {
                println!("{node}: not there");
            }
            Err(error) => {
                failed = true;
                eprintln!("{node}: {error}");
            }
        }
    }
    if removed == 0 && !failed {
        anyhow::bail!("no node has an image {name}; `shoal images --all-nodes` lists them");
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
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
