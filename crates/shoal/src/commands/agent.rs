//! `shoal agent` and `shoal dev`: the node process in the foreground.

use std::net::{SocketAddr, ToSocketAddrs};
use std::process::ExitCode;

use anyhow::Context;
use shoal_runtime::containerd::Containerd;

use crate::cli::{AgentArgs, DevArgs, NetworkArgs, RuntimeArgs};
use crate::node::network::NetworkConfig;
use crate::node::{self, NodeConfig};

pub async fn run_agent(args: AgentArgs) -> anyhow::Result<ExitCode> {
    init_logging();
    let name = match args.name {
        Some(name) => name,
        None => hostname()?,
    };
    shoal_types::check_dns_label(&name).map_err(|message| anyhow::anyhow!("--name: {message}"))?;
    let bind_host = args.bind.unwrap_or_else(|| args.advertise.clone());
    let bind = resolve(&format!("{bind_host}:{}", args.api_port)).context("--bind")?;
    let gossip_bind = resolve(&format!("{bind_host}:{}", args.gossip_port)).context("--bind")?;
    let gossip_advertise =
        resolve(&format!("{}:{}", args.advertise, args.gossip_port)).context("--advertise")?;
    let peers = args
        .peers
        .iter()
        .map(|peer| {
            if peer.contains(':') {
                peer.clone()
            } else {
                format!("{peer}:{}", args.api_port)
            }
        })
        .collect();
    let config = NodeConfig {
        name,
        data_dir: args.data_dir,
        bind,
        advertise: format!("{}:{}", args.advertise, args.api_port),
        gossip_bind,
        gossip_advertise,
        peers,
        forget_dead_after: args.forget_dead_after,
        labels: args.labels.into_iter().collect(),
        reserve_cpu_millis: args.reserve.reserve_cpu,
        reserve_memory_bytes: args.reserve.reserve_memory,
        network: network_config(args.network)?,
        token: args.token,
        role: args.role,
        cert_lifetime: cert_lifetime(&args.pki)?,
        gossip_key_rotation: gossip_key_rotation(&args.pki)?,
        image_gc: image_gc(&args.runtime)?,
        allows: args.allow.allows(),
    };
    start(config, args.runtime).await
}

fn image_gc(args: &RuntimeArgs) -> anyhow::Result<crate::node::image_gc::ImageGcConfig> {
    let config = crate::node::image_gc::ImageGcConfig {
        root: args.containerd_root.clone(),
        high_percent: args.image_gc_high,
        low_percent: args.image_gc_low,
        interval: args.image_gc_interval,
    };
    config.check().map_err(anyhow::Error::msg)?;
    anyhow::ensure!(
        config.root.is_dir(),
        "--containerd-root {}: no such directory; give containerd's `root` (see `containerd config dump`)",
        config.root.display()
    );
    Ok(config)
}

fn cert_lifetime(args: &crate::cli::PkiArgs) -> anyhow::Result<std::time::Duration> {
    // A removed node is remembered as long as any certificate it held can
    // still be renewed: its lifetime and the grace after its end.
    let longest = shoal_pki::ca::LEAF_LIFETIME_MAX - shoal_pki::tls::EXPIRED_RENEWAL_GRACE;
    let range = shoal_pki::ca::LEAF_LIFETIME_MIN..=longest;
    anyhow::ensure!(
        range.contains(&args.cert_lifetime),
        "--cert-lifetime: 1m to {}, not {}",
        humantime::format_duration(longest),
        humantime::format_duration(args.cert_lifetime)
    );
    Ok(args.cert_lifetime)
}

fn gossip_key_rotation(args: &crate::cli::PkiArgs) -> anyhow::Result<std::time::Duration> {
    let range = std::time::Duration::from_secs(1)..=std::time::Duration::from_secs(90 * 86_400);
    anyhow::ensure!(
        range.contains(&args.gossip_key_rotation),
        "--gossip-key-rotation: 1s to 90d, not {}",
        humantime::format_duration(args.gossip_key_rotation)
    );
    Ok(args.gossip_key_rotation)
}

pub async fn run_dev(args: DevArgs) -> anyhow::Result<ExitCode> {
    init_logging();
    let bind = resolve(&args.api).context("--api")?;
    let gossip = SocketAddr::new(bind.ip(), args.gossip_port);
    let config = NodeConfig {
        name: hostname().unwrap_or_else(|_| "dev".into()),
        data_dir: args.data_dir,
        bind,
        advertise: bind.to_string(),
        gossip_bind: gossip,
        gossip_advertise: gossip,
        peers: Vec::new(),
        forget_dead_after: shoal_cluster::membership::DEFAULT_FORGET_DEAD_AFTER,
        labels: Default::default(),
        reserve_cpu_millis: args.reserve.reserve_cpu,
        reserve_memory_bytes: args.reserve.reserve_memory,
        network: network_config(args.network)?,
        token: None,
        role: None,
        cert_lifetime: cert_lifetime(&args.pki)?,
        gossip_key_rotation: gossip_key_rotation(&args.pki)?,
        image_gc: image_gc(&args.runtime)?,
        allows: args.allow.allows(),
    };
    let data_dir = config.data_dir.clone();
    eprintln!(
        "shoal dev: a one-node cluster; API on https://{bind}, its credential in the `dev` context of your shoal config (try `shoal nodes`, `shoal apply -f app.yaml`); Ctrl-C stops the node, its containers keep running"
    );
    // Once the node has written its admin credential, the CLI's `dev`
    // context points at it, so `shoal ps` just works on this machine.
    tokio::spawn(async move {
        for _ in 0..600 {
            if let Ok(bytes) = std::fs::read(data_dir.join("admin.json")) {
                if let Ok(credential) = serde_json::from_slice(&bytes) {
                    match crate::config::save_context("dev", credential) {
                        Ok(path) => {
                            tracing::info!(config = %path.display(), "the `dev` context is current")
                        }
                        Err(error) => tracing::warn!(%error, "writing the CLI config"),
                    }
                    return;
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    });
    start(config, args.runtime).await
}

async fn start(config: NodeConfig, runtime: RuntimeArgs) -> anyhow::Result<ExitCode> {
    let containerd = Containerd::connect(
        &runtime.containerd_socket,
        &runtime.containerd_namespace,
        &runtime.snapshotter,
    )
    .await
    .with_context(|| {
        format!(
            "connecting to containerd at {} (is it running? start it with `containerd &`)",
            runtime.containerd_socket.display()
        )
    })?;
    // The shim runs this same binary as each container's log writer.
    let this_binary = std::env::current_exe().context("finding this binary's path")?;
    let containerd = containerd.with_log_writer(this_binary);
    node::run(config, containerd).await?;
    Ok(ExitCode::SUCCESS)
}

fn network_config(args: NetworkArgs) -> anyhow::Result<NetworkConfig> {
    let cluster_cidr = match args.cluster_cidr {
        Some(text) => Some(
            shoal_net::subnet::Ipv4Cidr::parse("--cluster-cidr", &text)
                .map_err(|error| anyhow::anyhow!("{error}"))?
                .to_string(),
        ),
        None => None,
    };
    let mut bridge = shoal_net::bridge::BridgeNetwork::new(
        shoal_net::subnet::Ipv4Cidr::parse("subnet", shoal_net::subnet::CLUSTER_CIDR_DEFAULT)
            .map_err(|error| anyhow::anyhow!("{error}"))?,
        "/",
    );
    bridge.bridge = args.bridge.clone();
    bridge
        .validate()
        .map_err(|error| anyhow::anyhow!("--{error}"))?;
    let cni_config = match &args.cni_config {
        Some(path) => {
            let size = std::fs::metadata(path)
                .with_context(|| format!("--cni-config {}", path.display()))?
                .len();
            anyhow::ensure!(
                size <= crate::node::network::CNI_CONFIG_BYTES_MAX,
                "--cni-config {}: larger than {} bytes",
                path.display(),
                crate::node::network::CNI_CONFIG_BYTES_MAX
            );
            let template = std::fs::read_to_string(path)
                .with_context(|| format!("--cni-config {}", path.display()))?;
            // Tried with an example subnet now, so a bad file stops the
            // agent at once instead of every task later.
            let example = shoal_net::subnet::Ipv4Cidr::parse("subnet", "10.42.0.0/24")
                .map_err(|error| anyhow::anyhow!("{error}"))?;
            crate::node::network::render_conflist(
                &template,
                example,
                &args.bridge,
                std::path::Path::new("/var/lib/shoal/net/cni/ipam"),
            )
            .with_context(|| format!("--cni-config {}", path.display()))?;
            Some(template)
        }
        None => None,
    };
    Ok(NetworkConfig {
        bridge: args.bridge,
        cni_plugin_dirs: args.cni_plugin_dirs,
        cluster_cidr,
        resolv_conf: args.resolv_conf,
        dns_port: 53,
        cni_config,
    })
}

fn resolve(addr: &str) -> anyhow::Result<SocketAddr> {
    addr.to_socket_addrs()
        .with_context(|| format!("`{addr}` is not HOST:PORT"))?
        .next()
        .with_context(|| format!("`{addr}` resolves to no address"))
}

/// The host name, made into a DNS label.
fn hostname() -> anyhow::Result<String> {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .context("reading the host name; give --name")?;
    let name: String = raw
        .trim()
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let name = name.trim_matches('-').chars().take(63).collect::<String>();
    if shoal_types::check_dns_label(&name).is_ok() {
        Ok(name)
    } else {
        Ok(format!(
            "node-{}",
            name.trim_start_matches(|c: char| !c.is_ascii_lowercase())
        )
        .chars()
        .take(63)
        .collect())
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SHOAL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
