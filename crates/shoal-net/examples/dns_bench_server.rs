//! shoal's DNS server with a synthetic record set, for `bench/dns.sh`.
//!
//! ```text
//! dns_bench_server --listen 127.0.0.2:5300 --out DIR
//!     [--apps 10] [--services 10] [--replicas 10] [--nodes 10]
//!     [--zone shoal] [--ttl 5] [--upstream IP:PORT]...
//! ```
//!
//! Fills the zone as a node would for `APPS × SERVICES` services of
//! `REPLICAS` running tasks each: `SERVICE.APP` has an A record per task,
//! `TASK.SERVICE.APP` (the task's `SLOT-SERIAL`) one A record, and `_http._tcp.SERVICE.APP` an SRV
//! record per task (port 8080). Task `i` gets `10.42.(i % NODES).(2 + i /
//! NODES)`, as if the replicas were spread over `NODES` node subnets.
//!
//! Before serving it writes into DIR the same names and addresses for the
//! servers it is compared with, and the query lists for dnsperf:
//!
//! | file | what |
//! |---|---|
//! | `queries.txt` | every name of the zone once: `SERVICE.APP A`, `_http._tcp.SERVICE.APP SRV`, `TASK.SERVICE.APP A` |
//! | `queries-service-a.txt`, `queries-srv.txt`, `queries-task-a.txt` | the same split by kind |
//! | `queries-nxdomain.txt` | names inside the zone that do not exist (NXDOMAIN) |
//! | `dnsmasq.hosts` | the A records as a hosts file, for dnsmasq's `addn-hosts` |
//! | `dnsmasq-srv.conf` | the SRV records as dnsmasq `srv-host` lines |
//! | `unbound-local.conf` | `local-zone` (static), the SOA and every record as unbound `local-data` |
//!
//! Then it prints `ready LISTEN records N queries Q` on stdout and serves
//! until SIGTERM or SIGINT.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use shoal_net::dns::{DnsConfig, DnsRecords, DnsServer, ServicePort, Zone, UPSTREAMS_MAX};
use shoal_types::Protocol;

/// Tasks in the record set at most (the node subnets run out past this).
const TASKS_MAX: usize = 256 * 253;
/// Node subnets `10.42.N.0/24` at most.
const NODES_MAX: usize = 256;
/// Names in `queries-nxdomain.txt`.
const NXDOMAIN_QUERIES: usize = 1_000;
/// How long the graceful shutdown may take.
const SHUTDOWN_TIMEOUT_MS: u64 = 3_000;
/// The named port published as SRV for every service.
const PORT_NAME: &str = "http";
const PORT: u16 = 8080;

const APP_WORDS: &[&str] = &[
    "shop", "billing", "auth", "search", "media", "chat", "ledger", "maps", "mail", "ads",
];
const SERVICE_WORDS: &[&str] = &[
    "web", "api", "worker", "cache", "queue", "db", "gateway", "metrics", "mailer", "cron",
];

const USAGE: &str = "usage: dns_bench_server --listen IP:PORT --out DIR \
[--apps N] [--services N] [--replicas N] [--nodes N] [--zone NAME] [--ttl S] \
[--upstream IP:PORT]...";

struct Args {
    listen: SocketAddr,
    out: PathBuf,
    apps: usize,
    services: usize,
    replicas: usize,
    nodes: usize,
    zone: String,
    ttl_s: u32,
    upstreams: Vec<SocketAddr>,
}

fn parse_args(mut words: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut listen = None;
    let mut out = None;
    let mut args = Args {
        listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        out: PathBuf::new(),
        apps: 10,
        services: 10,
        replicas: 10,
        nodes: 10,
        zone: "shoal".to_owned(),
        ttl_s: 5,
        upstreams: Vec::new(),
    };
    fn number<T: std::str::FromStr>(flag: &str, value: &str) -> Result<T, String> {
        value
            .parse()
            .map_err(|_| format!("{flag}: `{value}` is not a number in range"))
    }
    fn address(flag: &str, value: &str) -> Result<SocketAddr, String> {
        value
            .parse()
            .map_err(|_| format!("{flag}: `{value}` is not an IP:PORT address"))
    }
    while let Some(flag) = words.next() {
        let value = words
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        match flag.as_str() {
            "--listen" => listen = Some(address(&flag, &value)?),
            "--out" => out = Some(PathBuf::from(value)),
            "--apps" => args.apps = number(&flag, &value)?,
            "--services" => args.services = number(&flag, &value)?,
            "--replicas" => args.replicas = number(&flag, &value)?,
            "--nodes" => args.nodes = number(&flag, &value)?,
            "--zone" => args.zone = value,
            "--ttl" => args.ttl_s = number(&flag, &value)?,
            "--upstream" => args.upstreams.push(address(&flag, &value)?),
            _ => return Err(format!("unknown flag `{flag}`\n{USAGE}")),
        }
    }
    args.listen = listen.ok_or_else(|| format!("--listen is required\n{USAGE}"))?;
    args.out = out.ok_or_else(|| format!("--out is required\n{USAGE}"))?;
    if args.apps == 0 || args.services == 0 || args.replicas == 0 {
        return Err("--apps, --services and --replicas must be at least 1".to_owned());
    }
    if args.nodes == 0 || args.nodes > NODES_MAX {
        return Err(format!("--nodes must be 1 to {NODES_MAX}"));
    }
    let tasks = args
        .apps
        .checked_mul(args.services)
        .and_then(|n| n.checked_mul(args.replicas))
        .filter(|n| *n <= TASKS_MAX)
        .ok_or_else(|| format!("apps × services × replicas must be at most {TASKS_MAX}"))?;
    if tasks.div_ceil(args.nodes) > 253 {
        return Err(format!(
            "{tasks} tasks do not fit in {} node subnets of 253 addresses; raise --nodes",
            args.nodes
        ));
    }
    // The zone's name goes into the other servers' files: check it as the
    // server will.
    Zone::new(&args.zone, args.ttl_s).map_err(|e| format!("--zone: {e}"))?;
    args.zone = args.zone.trim_end_matches('.').to_ascii_lowercase();
    if args.upstreams.len() > UPSTREAMS_MAX {
        return Err(format!("at most {UPSTREAMS_MAX} --upstream"));
    }
    Ok(args)
}

/// `words[i]`, or the word with a number once the list runs out.
fn word(words: &[&str], i: usize) -> String {
    let base = words[i % words.len()];
    match i / words.len() {
        0 => base.to_owned(),
        round => format!("{base}{round}"),
    }
}

/// One service with its running tasks (label, address).
struct Service {
    app: String,
    service: String,
    /// `SERVICE.APP`, relative to the zone.
    name: String,
    tasks: Vec<(String, Ipv4Addr)>,
}

fn synthetic_services(args: &Args) -> Vec<Service> {
    let mut services = Vec::with_capacity(args.apps * args.services);
    let mut task_index = 0usize;
    for a in 0..args.apps {
        let app = word(APP_WORDS, a);
        for s in 0..args.services {
            let service = word(SERVICE_WORDS, s);
            let name = format!("{service}.{app}");
            let tasks = (0..args.replicas)
                .map(|slot| {
                    let node = task_index % args.nodes;
                    let host = 2 + task_index / args.nodes;
                    task_index += 1;
                    // Bounds checked in parse_args: node < 256, host <= 254.
                    let address = Ipv4Addr::new(10, 42, node as u8, host as u8);
                    // A task's label: its slot and serial (its id without
                    // the app and service, which the name already holds).
                    (format!("{slot}-1"), address)
                })
                .collect();
            services.push(Service {
                app: app.clone(),
                service,
                name,
                tasks,
            });
        }
    }
    services
}

fn records_of(services: &[Service]) -> Result<DnsRecords, String> {
    let port = ServicePort {
        name: PORT_NAME.to_owned(),
        protocol: Protocol::Tcp,
        port: PORT,
    };
    let mut records = DnsRecords::new();
    for service in services {
        for (task, address) in &service.tasks {
            records
                .add_task(
                    &service.app,
                    &service.service,
                    task,
                    *address,
                    std::slice::from_ref(&port),
                )
                .map_err(|e| e.to_string())?;
        }
    }
    Ok(records)
}

fn write_file(path: &Path, text: &str) -> Result<(), String> {
    std::fs::write(path, text).map_err(|e| format!("writing {}: {e}", path.display()))
}

/// Writes the query lists and the other servers' configs; returns the
/// number of in-zone queries.
fn write_files(args: &Args, services: &[Service]) -> Result<usize, String> {
    let zone = args.zone.trim_end_matches('.');
    let ttl = args.ttl_s;
    let srv_owner = |service: &str| format!("_{PORT_NAME}._tcp.{service}.{zone}");

    let mut queries = String::new();
    let mut query_count = 0;
    let (mut service_a, mut srv, mut task_a) = (String::new(), String::new(), String::new());
    // Hosts file: one line per address, with every name that has it.
    let mut hosts: BTreeMap<Ipv4Addr, Vec<String>> = BTreeMap::new();
    let mut dnsmasq_srv = String::new();
    let mut unbound = format!(
        "# generated by dns_bench_server (services: {count}); include it from unbound.conf\n\
         local-zone: \"{zone}.\" static\n\
         local-data: \"{zone}. {ttl} IN SOA ns.{zone}. hostmaster.{zone}. 1 3600 600 86400 {ttl}\"\n",
        count = services.len(),
    );
    for service in services {
        let fqdn = format!("{}.{zone}", service.name);
        let _ = writeln!(queries, "{fqdn} A");
        let _ = writeln!(queries, "{} SRV", srv_owner(&service.name));
        let _ = writeln!(service_a, "{fqdn} A");
        let _ = writeln!(srv, "{} SRV", srv_owner(&service.name));
        query_count += 2;
        for (task, address) in &service.tasks {
            let task_fqdn = format!("{task}.{fqdn}");
            let _ = writeln!(queries, "{task_fqdn} A");
            let _ = writeln!(task_a, "{task_fqdn} A");
            query_count += 1;
            let names = hosts.entry(*address).or_default();
            names.push(task_fqdn.clone());
            names.push(fqdn.clone());
            let _ = writeln!(
                dnsmasq_srv,
                "srv-host={},{task_fqdn},{PORT},0,1",
                srv_owner(&service.name)
            );
            let _ = writeln!(unbound, "local-data: \"{fqdn}. {ttl} IN A {address}\"");
            let _ = writeln!(unbound, "local-data: \"{task_fqdn}. {ttl} IN A {address}\"");
            let _ = writeln!(
                unbound,
                "local-data: \"{}. {ttl} IN SRV 0 1 {PORT} {task_fqdn}.\"",
                srv_owner(&service.name)
            );
        }
    }
    let mut hosts_text = String::new();
    for (address, names) in &hosts {
        let _ = writeln!(hosts_text, "{address} {}", names.join(" "));
    }
    // Missing names inside the zone, under apps that exist.
    let mut nxdomain = String::new();
    for i in 0..NXDOMAIN_QUERIES {
        let app = &services[i % services.len()].app;
        let _ = writeln!(nxdomain, "missing{i}.{app}.{zone} A");
    }

    std::fs::create_dir_all(&args.out)
        .map_err(|e| format!("creating {}: {e}", args.out.display()))?;
    write_file(&args.out.join("queries.txt"), &queries)?;
    write_file(&args.out.join("queries-service-a.txt"), &service_a)?;
    write_file(&args.out.join("queries-srv.txt"), &srv)?;
    write_file(&args.out.join("queries-task-a.txt"), &task_a)?;
    write_file(&args.out.join("queries-nxdomain.txt"), &nxdomain)?;
    write_file(&args.out.join("dnsmasq.hosts"), &hosts_text)?;
    write_file(&args.out.join("dnsmasq-srv.conf"), &dnsmasq_srv)?;
    write_file(&args.out.join("unbound-local.conf"), &unbound)?;
    Ok(query_count)
}

async fn run(args: Args) -> Result<(), String> {
    let services = synthetic_services(&args);
    let records = records_of(&services)?;
    let record_count = records.len();
    let query_count = write_files(&args, &services)?;

    let mut config = DnsConfig::new(args.listen, args.upstreams.clone());
    config.zone = args.zone.clone();
    config.ttl_s = args.ttl_s;
    // Install the handlers before announcing readiness, so that a signal
    // sent right after `ready` stops us cleanly.
    use tokio::signal::unix::{signal, SignalKind};
    let mut sigterm =
        signal(SignalKind::terminate()).map_err(|e| format!("SIGTERM handler: {e}"))?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(|e| format!("SIGINT handler: {e}"))?;
    let server = DnsServer::start(config).await.map_err(|e| e.to_string())?;
    server.zone().replace(records).map_err(|e| e.to_string())?;

    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(
        stdout,
        "ready {} records {record_count} queries {query_count}",
        server.local_addr()
    );
    let _ = stdout.flush();
    drop(stdout);

    tokio::select! {
        _ = sigterm.recv() => {}
        _ = sigint.recv() => {}
    }
    match tokio::time::timeout(
        Duration::from_millis(SHUTDOWN_TIMEOUT_MS),
        server.shutdown(),
    )
    .await
    {
        Ok(result) => result.map_err(|e| e.to_string()),
        Err(_) => Err(format!(
            "the server did not stop within {SHUTDOWN_TIMEOUT_MS} ms"
        )),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    if std::env::args().skip(1).any(|a| a == "-h" || a == "--help") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("dns_bench_server: {message}");
            ExitCode::FAILURE
        }
    }
}
