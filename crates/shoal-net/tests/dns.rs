//! The DNS server seen from the real `dig` (Debian's dnsutils).

use std::net::{Ipv4Addr, SocketAddr};

use shoal_net::dns::{DnsConfig, DnsRecords, DnsServer, ServicePort};
use shoal_types::Protocol;

/// Runs `dig @ADDR -p PORT ARGS...` with a short timeout and one try.
async fn dig(server: SocketAddr, query: &[&str]) -> String {
    let mut args = vec![
        format!("@{}", server.ip()),
        "-p".to_owned(),
        server.port().to_string(),
        "+time=2".to_owned(),
        "+tries=1".to_owned(),
    ];
    args.extend(query.iter().map(|s| (*s).to_owned()));
    let output = tokio::process::Command::new("dig")
        .args(&args)
        .output()
        .await
        .expect("run dig (apt-get install dnsutils)");
    assert!(
        output.status.success(),
        "dig {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The lines of a `+short` answer, sorted.
fn sorted_lines(text: &str) -> Vec<String> {
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    lines.sort();
    lines
}

fn web(addresses: &[(&str, Ipv4Addr)]) -> DnsRecords {
    let mut records = DnsRecords::new();
    let http = ServicePort {
        name: "http".into(),
        protocol: Protocol::Tcp,
        port: 8080,
    };
    for (task, address) in addresses {
        records
            .add_task("demo", "web", task, *address, std::slice::from_ref(&http))
            .unwrap();
    }
    records
}

async fn start(zone: &str, upstreams: Vec<SocketAddr>) -> DnsServer {
    let mut config = DnsConfig::new("127.0.0.1:0".parse().unwrap(), upstreams);
    config.zone = zone.to_owned();
    config.forward_timeout_ms = 1_000;
    DnsServer::start(config).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_are_served_and_replaced_at_once() {
    let server = start("shoal", Vec::new()).await;
    let addr = server.local_addr();
    server
        .zone()
        .replace(web(&[
            ("t1", Ipv4Addr::new(10, 42, 0, 2)),
            ("t2", Ipv4Addr::new(10, 42, 1, 2)),
        ]))
        .unwrap();

    let a = dig(addr, &["web.demo.shoal", "A", "+short"]).await;
    assert_eq!(sorted_lines(&a), vec!["10.42.0.2", "10.42.1.2"]);
    let srv = dig(addr, &["_http._tcp.web.demo.shoal", "SRV", "+short"]).await;
    assert_eq!(
        sorted_lines(&srv),
        vec!["0 1 8080 t1.web.demo.shoal.", "0 1 8080 t2.web.demo.shoal."]
    );
    let task = dig(addr, &["T1.web.demo.shoal", "A", "+short"]).await;
    assert_eq!(sorted_lines(&task), vec!["10.42.0.2"]);
    // Over TCP too.
    let tcp = dig(addr, &["web.demo.shoal", "A", "+short", "+tcp"]).await;
    assert_eq!(sorted_lines(&tcp), vec!["10.42.0.2", "10.42.1.2"]);
    // The TTL is the short one.
    let full = dig(addr, &["web.demo.shoal", "A", "+noall", "+answer"]).await;
    assert!(
        full.lines()
            .all(|l| l.split_whitespace().nth(1) == Some("5")),
        "{full}"
    );

    // A replacement is seen by the very next query.
    server
        .zone()
        .replace(web(&[("t3", Ipv4Addr::new(10, 42, 2, 9))]))
        .unwrap();
    let a = dig(addr, &["web.demo.shoal", "A", "+short"]).await;
    assert_eq!(sorted_lines(&a), vec!["10.42.2.9"]);
    let srv = dig(addr, &["_http._tcp.web.demo.shoal", "SRV", "+short"]).await;
    assert_eq!(sorted_lines(&srv), vec!["0 1 8080 t3.web.demo.shoal."]);

    // What `shoal dns list` would print.
    let rows: Vec<String> = server
        .zone()
        .rows()
        .into_iter()
        .map(|r| format!("{} {} {}", r.name, r.record_type, r.value))
        .collect();
    assert_eq!(
        rows,
        vec![
            "_http._tcp.web.demo.shoal SRV 0 1 8080 t3.web.demo.shoal",
            "t3.web.demo.shoal A 10.42.2.9",
            "web.demo.shoal A 10.42.2.9",
        ]
    );
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_names_in_the_zone_are_authoritative_nxdomain() {
    let server = start("shoal", Vec::new()).await;
    let addr = server.local_addr();
    server
        .zone()
        .replace(web(&[("t1", Ipv4Addr::new(10, 42, 0, 2))]))
        .unwrap();

    let missing = dig(addr, &["db.demo.shoal", "A"]).await;
    assert!(missing.contains("status: NXDOMAIN"), "{missing}");
    assert!(
        missing.contains(" aa"),
        "the answer must be authoritative: {missing}"
    );
    assert!(
        missing.contains("SOA"),
        "the SOA gives the negative TTL: {missing}"
    );
    // A name that exists but has no record of that type: NOERROR, empty.
    let nodata = dig(addr, &["web.demo.shoal", "AAAA"]).await;
    assert!(nodata.contains("status: NOERROR"), "{nodata}");
    assert!(nodata.contains("ANSWER: 0"), "{nodata}");
    // Without upstreams, other names fail rather than hang.
    let outside = dig(addr, &["example.com", "A"]).await;
    assert!(outside.contains("status: SERVFAIL"), "{outside}");
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_outside_the_zone_are_forwarded_upstream() {
    // A second instance of our server plays the upstream resolver.
    let upstream = start("upstream.test", Vec::new()).await;
    let mut upstream_records = DnsRecords::new();
    upstream_records
        .add_a("www", Ipv4Addr::new(192, 0, 2, 80))
        .unwrap();
    upstream.zone().replace(upstream_records).unwrap();

    // The first upstream listed answers nothing: the next one is tried.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let server = start(
        "shoal",
        vec![silent.local_addr().unwrap(), upstream.local_addr()],
    )
    .await;
    let addr = server.local_addr();
    server
        .zone()
        .replace(web(&[("t1", Ipv4Addr::new(10, 42, 0, 2))]))
        .unwrap();

    let forwarded = dig(addr, &["www.upstream.test", "A", "+time=4"]).await;
    assert!(forwarded.contains("192.0.2.80"), "{forwarded}");
    assert!(forwarded.contains("status: NOERROR"), "{forwarded}");
    // The upstream's NXDOMAIN comes back as is.
    let missing = dig(addr, &["nope.upstream.test", "A", "+time=4"]).await;
    assert!(missing.contains("status: NXDOMAIN"), "{missing}");
    // Our own zone is still ours.
    let own = dig(addr, &["web.demo.shoal", "A", "+short"]).await;
    assert_eq!(sorted_lines(&own), vec!["10.42.0.2"]);

    server.shutdown().await.unwrap();
    upstream.shutdown().await.unwrap();
}

/// Ten replicas' SRV records fit in 512 bytes, their targets' A records do
/// not: a client without EDNS gets every SRV record, no A records and no TC
/// flag (so it does not ask again over TCP); a client with a larger buffer
/// gets the A records too, and one with a buffer too small for all of them
/// gets fewer, still without TC.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn additional_records_never_truncate_an_answer() {
    let server = start("shoal", Vec::new()).await;
    let addr = server.local_addr();
    let tasks: Vec<(String, Ipv4Addr)> = (0..10)
        .map(|i| (format!("{i}-{}", 100 + i), Ipv4Addr::new(10, 42, i, 2)))
        .collect();
    let named: Vec<(&str, Ipv4Addr)> = tasks.iter().map(|(n, a)| (n.as_str(), *a)).collect();
    server.zone().replace(web(&named)).unwrap();

    let plain = dig(
        addr,
        &["_http._tcp.web.demo.shoal", "SRV", "+noedns", "+ignore"],
    )
    .await;
    let flags = plain
        .lines()
        .find(|line| line.contains(";; flags:"))
        .unwrap_or_default()
        .to_string();
    assert!(!flags.contains(" tc"), "{plain}");
    assert!(flags.contains("ANSWER: 10,"), "{plain}");

    let big = dig(addr, &["_http._tcp.web.demo.shoal", "SRV", "+bufsize=4096"]).await;
    let flags = big
        .lines()
        .find(|line| line.contains(";; flags:"))
        .unwrap_or_default()
        .to_string();
    assert!(!flags.contains(" tc"), "{big}");
    // Ten A records of the targets, and the OPT record.
    assert!(
        flags.contains("ANSWER: 10,") && flags.contains("ADDITIONAL: 11"),
        "{big}"
    );

    let small = dig(
        addr,
        &[
            "_http._tcp.web.demo.shoal",
            "SRV",
            "+bufsize=600",
            "+ignore",
        ],
    )
    .await;
    let flags = small
        .lines()
        .find(|line| line.contains(";; flags:"))
        .unwrap_or_default()
        .to_string();
    assert!(
        !flags.contains(" tc") && flags.contains("ANSWER: 10,"),
        "{small}"
    );
    assert!(
        !flags.contains("ADDITIONAL: 11"),
        "fewer targets fit: {small}"
    );
}
