//! CIDRs, ports, protocols and allow events as the policy reads them.
use super::*;

#[test]
fn cidr_forms() {
    assert_eq!(parse_cidr("10.0.0.0/8").unwrap().to_string(), "10.0.0.0/8");
    assert_eq!(parse_cidr("10.1.2.3").unwrap().to_string(), "10.1.2.3/32");
    assert_eq!(parse_cidr("::1").unwrap().to_string(), "::1/128");
    assert_eq!(parse_cidr("0.0.0.0/0").unwrap().to_string(), "0.0.0.0/0");
    assert_eq!(parse_cidr("::/0").unwrap().to_string(), "::/0");
    assert_eq!(
        parse_cidr("2001:db8::/32").unwrap().to_string(),
        "2001:db8::/32"
    );
}

#[test]
fn mapped_ipv6_becomes_ipv4() {
    assert_eq!(
        parse_cidr("::ffff:10.0.0.0/104").unwrap().to_string(),
        "10.0.0.0/8"
    );
    assert_eq!(
        parse_cidr("::ffff:127.0.0.1").unwrap().to_string(),
        "127.0.0.1/32"
    );
    assert_eq!(
        parse_cidr("::ffff:0:0/96").unwrap().to_string(),
        "0.0.0.0/0"
    );
    // Shorter than /96 it covers more than the mapped range, so it stays IPv6.
    assert_eq!(
        parse_cidr("::ffff:0:0/95").unwrap_err(),
        "invalid CIDR \"::ffff:0:0/95\": host bits are set (the address is not the first \
             of its /95 network); write ::fffe:0:0/95 for the network, or ::ffff:0.0.0.0/128 \
             for the single address"
    );
    assert_eq!(parse_cidr("::/80").unwrap().to_string(), "::/80");
}

#[test]
fn cidr_errors() {
    assert_eq!(
        parse_cidr("127.0.0.1/33").unwrap_err(),
        "invalid CIDR \"127.0.0.1/33\": prefix length 33 is longer than 32; expected an \
             address like 10.0.0.0/8 or 2001:db8::/32"
    );
    assert_eq!(
        parse_cidr("::/129").unwrap_err(),
        "invalid CIDR \"::/129\": prefix length 129 is longer than 128; expected an \
             address like 10.0.0.0/8 or 2001:db8::/32"
    );
    assert_eq!(
        parse_cidr("127.0.0.1/8").unwrap_err(),
        "invalid CIDR \"127.0.0.1/8\": host bits are set (the address is not the first of \
             its /8 network); write 127.0.0.0/8 for the network, or 127.0.0.1/32 for the \
             single address"
    );
    assert!(parse_cidr("example.com")
        .unwrap_err()
        .contains("\"example.com\" is not an IPv4 or IPv6 address"));
    assert!(parse_cidr("10.0.0.0/x")
        .unwrap_err()
        .contains("prefix length \"x\" is not a number"));
    assert!(parse_cidr("10.0.0.0/99999999999999999999").is_err());
}

#[test]
fn ports() {
    assert_eq!(
        PortRange::parse("443").unwrap(),
        PortRange { lo: 443, hi: 443 }
    );
    assert_eq!(
        PortRange::parse("8000-8099").unwrap(),
        PortRange { lo: 8000, hi: 8099 }
    );
    assert_eq!(PortRange::parse("0 - 65535").unwrap(), PortRange::ALL);
    assert_eq!(
        PortRange::parse("9000-8000").unwrap_err(),
        "invalid port range \"9000-8000\": the range runs backwards (9000 > 8000); write \
             it low-high, e.g. 8000-9000"
    );
    assert!(PortRange::parse("65536")
        .unwrap_err()
        .starts_with("port 65536 is larger than 65535"));
    assert!(PortRange::parse("http")
        .unwrap_err()
        .starts_with("invalid port \"http\""));
    assert!(PortRange::parse("1-2-3").is_err());
    assert_eq!(PortRange { lo: 1, hi: 1 }.to_string(), "1");
    assert_eq!(PortRange { lo: 1, hi: 2 }.to_string(), "1-2");
}

#[test]
fn allow_events() {
    assert_eq!(AllowEvents::parse("all").unwrap(), AllowEvents::All);
    assert_eq!(AllowEvents::parse("none").unwrap(), AllowEvents::None);
    assert_eq!(AllowEvents::parse("sample:1").unwrap(), AllowEvents::All);
    assert_eq!(
        AllowEvents::parse("sample:10").unwrap(),
        AllowEvents::Sample(10)
    );
    assert!(AllowEvents::parse("sample:0").is_err());
    assert!(AllowEvents::parse("sample:x").is_err());
    assert!(AllowEvents::parse("some").is_err());
    assert_eq!(AllowEvents::All.sample_rate(), 1);
    assert_eq!(AllowEvents::None.sample_rate(), 0);
    assert_eq!(AllowEvents::Sample(7).sample_rate(), 7);
    assert_eq!(AllowEvents::Sample(7).to_string(), "sample:7");
}

#[test]
fn describe() {
    let rule = AllowRule {
        dest: Destination::Cidr("127.0.0.1/32".parse().unwrap()),
        ports: vec![
            PortRange { lo: 8000, hi: 8099 },
            PortRange { lo: 443, hi: 443 },
        ],
        protocols: PROTO_TCP,
        comment: None,
        name: None,
        requires_approval: false,
        read_only: false,
    };
    assert_eq!(rule.describe(), "127.0.0.1/32 tcp 8000-8099,443");
    let egress = EgressPolicy {
        allow: vec![rule],
        ..EgressPolicy::default()
    };
    assert_eq!(
        egress.describe_rule(0).unwrap(),
        "allow[0] 127.0.0.1/32 tcp 8000-8099,443"
    );
    assert_eq!(egress.describe_rule(1), None);
    let any = AllowRule {
        dest: Destination::Cidr("::/0".parse().unwrap()),
        ports: vec![],
        protocols: PROTO_TCP | PROTO_UDP,
        comment: Some("everything".into()),
        name: None,
        requires_approval: false,
        read_only: false,
    };
    assert_eq!(any.describe(), "::/0 tcp+udp any port (everything)");
}
