use std::net::{Ipv4Addr, SocketAddr};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{LowerName, Name, RecordType};
use shoal_types::Protocol;

use super::*;

fn web_records() -> DnsRecords {
    let mut records = DnsRecords::new();
    let http = ServicePort {
        name: "http".into(),
        protocol: Protocol::Tcp,
        port: 8080,
    };
    records
        .add_task(
            "demo",
            "web",
            "t1",
            Ipv4Addr::new(10, 42, 0, 2),
            std::slice::from_ref(&http),
        )
        .unwrap();
    records
        .add_task("demo", "web", "t2", Ipv4Addr::new(10, 42, 1, 2), &[http])
        .unwrap();
    records
}

#[test]
fn tasks_become_a_and_srv_rows() {
    let rows = web_records().rows("shoal");
    let text: Vec<String> = rows
        .iter()
        .map(|r| format!("{} {} {}", r.name, r.record_type, r.value))
        .collect();
    assert_eq!(
        text,
        vec![
            "_http._tcp.web.demo.shoal SRV 0 1 8080 t1.web.demo.shoal",
            "_http._tcp.web.demo.shoal SRV 0 1 8080 t2.web.demo.shoal",
            "t1.web.demo.shoal A 10.42.0.2",
            "t2.web.demo.shoal A 10.42.1.2",
            "web.demo.shoal A 10.42.0.2",
            "web.demo.shoal A 10.42.1.2",
        ]
    );
    assert_eq!(web_records().len(), 6);
}

#[test]
fn names_are_lowercased_and_checked() {
    let mut records = DnsRecords::new();
    records.add_a("Web.Demo", Ipv4Addr::LOCALHOST).unwrap();
    records.add_a("web.demo.", Ipv4Addr::LOCALHOST).unwrap();
    assert_eq!(records.len(), 1);
    let err = records.add_a("we b.demo", Ipv4Addr::LOCALHOST).unwrap_err();
    assert_eq!(
        err.to_string(),
        "dns name `we b.demo`: labels hold letters, digits and `-` only"
    );
    assert!(records.add_a("a..b", Ipv4Addr::LOCALHOST).is_err());
    assert!(records.add_a(&"a".repeat(64), Ipv4Addr::LOCALHOST).is_err());
    assert!(records
        .add_a("_http._tcp.web", Ipv4Addr::LOCALHOST)
        .is_err());
}

#[test]
fn lookups_answer_nodata_and_nxdomain() {
    let zone = Zone::new("shoal", 5).unwrap();
    zone.replace(web_records()).unwrap();
    let name = |n: &str| LowerName::from(Name::from_ascii(n).unwrap());
    let a = zone.lookup(&name("web.demo.shoal."), RecordType::A);
    assert_eq!((a.code, a.answers.len()), (ResponseCode::NoError, 2));
    assert!(a.answers.iter().all(|r| r.ttl == 5));
    let srv = zone.lookup(&name("_http._tcp.web.demo.shoal."), RecordType::SRV);
    assert_eq!(srv.answers.len(), 2);
    assert_eq!(srv.additionals.len(), 2, "the targets' A records go along");
    // An empty non-terminal exists but has no records.
    let demo = zone.lookup(&name("demo.shoal."), RecordType::A);
    assert_eq!(
        (demo.code, demo.answers.len(), demo.negative),
        (ResponseCode::NoError, 0, true)
    );
    let aaaa = zone.lookup(&name("web.demo.shoal."), RecordType::AAAA);
    assert_eq!((aaaa.code, aaaa.negative), (ResponseCode::NoError, true));
    let missing = zone.lookup(&name("db.demo.shoal."), RecordType::A);
    assert_eq!(missing.code, ResponseCode::NXDomain);
    let apex = zone.lookup(&name("shoal."), RecordType::SOA);
    assert_eq!((apex.code, apex.answers.len()), (ResponseCode::NoError, 1));
    // Replacing is seen at once.
    zone.replace(DnsRecords::new()).unwrap();
    let gone = zone.lookup(&name("web.demo.shoal."), RecordType::A);
    assert_eq!(gone.code, ResponseCode::NXDomain);
    assert!(zone.rows().is_empty());
}

#[test]
fn resolv_conf_nameservers_are_read() {
    let text = "# generated\nsearch example.com\nnameserver 192.168.1.1 # router\n\
                nameserver   2001:db8::53\n;nameserver 9.9.9.9\nnameserver fe80::1%eth0\n\
                options edns0\nnameserver 1.1.1.1\nnameserver 8.8.8.8\n";
    assert_eq!(
        parse_resolv_conf(text),
        vec![
            "192.168.1.1:53".parse::<SocketAddr>().unwrap(),
            "[2001:db8::53]:53".parse().unwrap(),
            "1.1.1.1:53".parse().unwrap(),
        ]
    );
    assert!(parse_resolv_conf("nameserver\nnameserver x\n").is_empty());
}
