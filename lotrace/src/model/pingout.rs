//! What lotrace reads from the traced ping: its target on the command line
//! and, from its output, the RTT it measured for each sequence number.

/// ping options (iputils) that take a value, so that the target can be told
/// apart from option arguments.
const PING_OPTS_WITH_VALUE: &str = "ceFIilmMNpQsStTwW";

/// Is `program` a ping (by its file name)?
pub fn is_ping(program: &str) -> bool {
    let base = program.rsplit('/').next().unwrap_or(program);
    matches!(base, "ping" | "ping4" | "ping6")
}

/// A ping's arguments, when `command` runs a ping: `ping ARGS` (also
/// `ping4`, `ping6`) or `busybox ping ARGS`.
pub fn ping_args(command: &[String]) -> Option<&[String]> {
    let base = |p: &str| p.rsplit('/').next().unwrap_or(p).to_string();
    match command {
        [p, args @ ..] if is_ping(p) => Some(args),
        [b, p, args @ ..] if base(b) == "busybox" && is_ping(p) => Some(args),
        _ => None,
    }
}

/// The host a ping command line pings: its last operand.
pub fn ping_target(args: &[String]) -> Option<String> {
    let mut target = None;
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        if a == "--" {
            target = args.get(i + 1..).and_then(|r| r.last()).cloned();
            break;
        }
        if let Some(opts) = a.strip_prefix('-').filter(|o| !o.is_empty()) {
            // Clustered flags: the first that takes a value takes the rest
            // of the word, or the next word.
            for (n, c) in opts.char_indices() {
                if PING_OPTS_WITH_VALUE.contains(c) {
                    if n + c.len_utf8() == opts.len() {
                        i += 1;
                    }
                    break;
                }
            }
        } else {
            target = Some(a.clone());
        }
        i += 1;
    }
    target
}

/// The lines of an /etc/hosts text that name `host`, comments dropped.
pub fn hosts_lines(hosts: &str, host: &str) -> Vec<String> {
    hosts
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| l.split_whitespace().skip(1).any(|n| n == host))
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect()
}

/// The pings whose output lotrace reads, each numbering its lines in its
/// own way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    /// iputils `ping`: `icmp_seq=N` is the sequence on the wire.
    Iputils,
    /// busybox `ping`: `seq=N` is the sequence on the wire.
    Busybox,
    /// oping: `icmp_seq=N` counts from 1; the first echo it sends has
    /// sequence 0.
    Oping,
    /// fping: `[N]` counts the echoes sent to that host. The sequence on
    /// the wire counts those sent to every host, so N is the wire's only
    /// while fping pings one host.
    Fping,
}

impl Dialect {
    /// The sequence on the wire of the echo a reply line reports.
    pub fn wire_seq(self, printed: u64) -> u16 {
        match self {
            Dialect::Iputils | Dialect::Busybox | Dialect::Fping => printed as u16,
            Dialect::Oping => printed.wrapping_sub(1) as u16,
        }
    }
}

/// One line of ping's output, as far as lotrace cares.
#[derive(Debug, PartialEq)]
pub enum PingLine {
    /// `PING host (addr) ...`: the address it resolved to, and which ping
    /// prints its header that way (`None`: not one lotrace knows).
    Header {
        host: String,
        addr: String,
        dialect: Option<Dialect>,
    },
    /// A reply with its RTT.
    Reply(PingReply),
    Other,
}

/// How a reply line numbers its echo.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SeqStyle {
    /// `icmp_seq=N`: iputils or oping, which the header tells apart.
    IcmpSeq,
    /// `seq=N`: busybox.
    Seq,
    /// `host : [N], ...`: fping.
    Fping,
}

#[derive(Clone, Debug, PartialEq)]
pub struct PingReply {
    pub style: SeqStyle,
    /// The number as printed.
    pub seq: u64,
    /// The address the reply came from, when the line has one.
    pub from: Option<std::net::IpAddr>,
    /// The host as fping printed it.
    pub host: Option<String>,
    pub rtt_ns: u64,
    /// Half the unit of the last digit printed: the time as printed is
    /// within this of ping's measurement.
    pub half_unit_ns: u64,
}

pub fn parse_line(line: &str) -> PingLine {
    if let Some(rest) = line.strip_prefix("PING ") {
        return parse_header(rest);
    }
    if let Some(r) = parse_fping(line) {
        return PingLine::Reply(r);
    }
    if line.contains("(DUP!)") {
        // A duplicate of a reply already printed: not a new measurement.
        return PingLine::Other;
    }
    let mut seq = None;
    let mut time = None;
    let mut words = line.split_whitespace().peekable();
    while let Some(w) = words.next() {
        if let Some(v) = w.strip_prefix("icmp_seq=") {
            seq = v.parse::<u64>().ok().map(|n| (SeqStyle::IcmpSeq, n));
        } else if let Some(v) = w.strip_prefix("seq=") {
            seq = v.parse::<u64>().ok().map(|n| (SeqStyle::Seq, n));
        } else if let Some(v) = w.strip_prefix("time=") {
            time = parse_time(v, words.peek().copied().unwrap_or(""));
        }
    }
    match (seq, time) {
        (Some((style, seq)), Some((rtt_ns, half_unit_ns))) => PingLine::Reply(PingReply {
            style,
            seq,
            from: reply_from(line),
            host: None,
            rtt_ns,
            half_unit_ns,
        }),
        _ => PingLine::Other,
    }
}

/// `PING host (addr) 56(84) bytes of data.` (iputils, IPv4),
/// `PING host(name (addr)) 56 data bytes` (iputils, IPv6; with `-I`,
/// `PING ::1(::1) from ::1 lo: 56 data bytes`),
/// `PING host (addr): 56 data bytes` (busybox),
/// `PING host (addr) 56 bytes of data.` (oping).
fn parse_header(rest: &str) -> PingLine {
    let host: String = rest
        .chars()
        .take_while(|c| !c.is_whitespace() && *c != '(')
        .collect();
    // The address is the first parenthesised text that parses as one.
    let addr = rest.match_indices('(').find_map(|(i, _)| {
        let inner = &rest[i + 1..];
        let end = inner.find([')', '('])?;
        let cand = &inner[..end];
        cand.parse::<std::net::IpAddr>()
            .ok()
            .map(|_| cand.to_string())
    });
    let tail = rest.rsplit(')').next().unwrap_or("");
    let words: Vec<&str> = tail.split_whitespace().collect();
    let dialect = match words.as_slice() {
        [":", _, "data", "bytes"] => Some(Dialect::Busybox),
        [_, "data", "bytes"] => Some(Dialect::Iputils),
        [_, "bytes", "of", "data."] => Some(Dialect::Oping),
        // iputils with a source or an interface (`-I`).
        ["from", .., _, "data", "bytes"] => Some(Dialect::Iputils),
        _ if tail.starts_with(": ") && tail.ends_with(" data bytes") => Some(Dialect::Busybox),
        _ => None,
    };
    // iputils, IPv4: `56(84) bytes of data.`, whose last `)` is the size's.
    let dialect = dialect.or_else(|| {
        let w: Vec<&str> = rest.split_whitespace().collect();
        (w.len() >= 4
            && w[w.len() - 3..] == ["bytes", "of", "data."]
            && w[w.len() - 4].contains('('))
        .then_some(Dialect::Iputils)
    });
    match addr {
        Some(addr) if !host.is_empty() => PingLine::Header {
            host,
            addr,
            dialect,
        },
        _ => PingLine::Other,
    }
}

/// `127.0.0.1 : [0], 64 bytes, 0.066 ms (0.066 avg, 0% loss)`.
fn parse_fping(line: &str) -> Option<PingReply> {
    let (host, rest) = line.split_once(" : [")?;
    let (seq, rest) = rest.split_once("], ")?;
    let (_bytes, rest) = rest.split_once(" bytes, ")?;
    let mut w = rest.split_whitespace();
    let (v, unit) = (w.next()?, w.next()?);
    if !w.next()?.starts_with('(') {
        return None;
    }
    let (rtt_ns, half_unit_ns) = parse_time(v, unit)?;
    let host = host.trim();
    Some(PingReply {
        style: SeqStyle::Fping,
        seq: seq.parse().ok()?,
        from: host.parse().ok(),
        host: Some(host.to_string()),
        rtt_ns,
        half_unit_ns,
    })
}

/// The address in `... bytes from ADDR: ...` or `from NAME (ADDR): ...`.
fn reply_from(line: &str) -> Option<std::net::IpAddr> {
    let rest = line.split_once(" from ")?.1;
    let end = rest.find(" icmp_seq=").or_else(|| rest.find(" seq="))?;
    let who = rest[..end].trim_end_matches(':');
    let who = match who.rsplit_once(" (") {
        Some((_, a)) => a.trim_end_matches(')'),
        None => who,
    };
    who.parse().ok()
}

/// `time=0.045 ms` and the like: the time in ns and half the unit of its
/// last printed digit (iputils prints 3 decimals below 1 ms, then 2, 1,
/// none from 100 ms; oping always 2). `time<1 ms` is not a measurement.
fn parse_time(v: &str, unit: &str) -> Option<(u64, u64)> {
    let x: f64 = v.parse().ok()?;
    let scale = match unit {
        "ms" => 1e6,
        "us" | "µs" => 1e3,
        "s" => 1e9,
        _ => return None,
    };
    let decimals = v.split_once('.').map_or(0, |(_, d)| d.len()) as i32;
    let half = 0.5 * scale / 10f64.powi(decimals);
    (x.is_finite() && x >= 0.0).then(|| ((x * scale).round() as u64, half.round() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn finds_the_target() {
        assert_eq!(
            ping_target(&s(&["127.0.0.1"])).as_deref(),
            Some("127.0.0.1")
        );
        assert_eq!(
            ping_target(&s(&["-c", "5", "-i", "0.2", "127.0.0.1"])).as_deref(),
            Some("127.0.0.1")
        );
        assert_eq!(
            ping_target(&s(&["-c5", "-q", "::1"])).as_deref(),
            Some("::1")
        );
        assert_eq!(
            ping_target(&s(&["-nqc", "3", "localhost"])).as_deref(),
            Some("localhost")
        );
        assert_eq!(
            ping_target(&s(&["-I", "lo", "-f", "127.0.0.2"])).as_deref(),
            Some("127.0.0.2")
        );
        assert_eq!(ping_target(&s(&["-c", "5"])), None);
        assert_eq!(
            ping_target(&s(&["--", "-weird"])).as_deref(),
            Some("-weird")
        );
    }

    #[test]
    fn finds_names_in_etc_hosts() {
        let hosts = "127.0.0.1\tlocalhost\n::1     localhost ip6-localhost ip6-loopback\n# 10.0.0.1 localhost\n10.1.1.1 other\n";
        assert_eq!(
            hosts_lines(hosts, "localhost"),
            vec![
                "127.0.0.1 localhost",
                "::1 localhost ip6-localhost ip6-loopback"
            ]
        );
        assert!(hosts_lines(hosts, "nothere").is_empty());
    }

    #[test]
    fn parses_ping_output() {
        assert_eq!(
            parse_line("PING 127.0.0.1 (127.0.0.1) 56(84) bytes of data."),
            PingLine::Header {
                host: "127.0.0.1".into(),
                addr: "127.0.0.1".into(),
                dialect: Some(Dialect::Iputils),
            }
        );
        assert_eq!(
            parse_line("64 bytes from 127.0.0.1: icmp_seq=3 ttl=64 time=0.045 ms"),
            PingLine::Reply(PingReply {
                style: SeqStyle::IcmpSeq,
                seq: 3,
                from: Some("127.0.0.1".parse().unwrap()),
                host: None,
                rtt_ns: 45_000,
                half_unit_ns: 500,
            })
        );
        assert_eq!(
            parse_line("64 bytes from localhost (::1): icmp_seq=12 ttl=64 time=1.20 ms"),
            PingLine::Reply(PingReply {
                style: SeqStyle::IcmpSeq,
                seq: 12,
                from: Some("::1".parse().unwrap()),
                host: None,
                rtt_ns: 1_200_000,
                half_unit_ns: 5_000,
            })
        );
        assert_eq!(
            parse_line("--- 127.0.0.1 ping statistics ---"),
            PingLine::Other
        );
        assert_eq!(
            parse_line("rtt min/avg/max/mdev = 0.031/0.040/0.052/0.007 ms"),
            PingLine::Other
        );
        assert!(is_ping("/usr/bin/ping") && is_ping("ping6") && !is_ping("pingx"));
        let cmd = s(&["/bin/busybox", "ping", "-c", "2", "0.0.0.0"]);
        assert_eq!(ping_args(&cmd), Some(&cmd[2..]));
        assert_eq!(ping_args(&s(&["ping", "::1"])), Some(&s(&["::1"])[..]));
        assert_eq!(ping_args(&s(&["busybox", "ls"])), None);
    }

    /// Lines as each ping prints them (iputils 20221126, busybox 1.35,
    /// oping 1.10, fping 5.1, all from Debian 12).
    #[test]
    fn knows_each_pings_header() {
        let d = |l: &str| match parse_line(l) {
            PingLine::Header { dialect, addr, .. } => (dialect, addr),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            d("PING 127.0.0.1 (127.0.0.1) 56(84) bytes of data."),
            (Some(Dialect::Iputils), "127.0.0.1".into())
        );
        assert_eq!(
            d("PING ::1(::1) 56 data bytes"),
            (Some(Dialect::Iputils), "::1".into())
        );
        assert_eq!(
            d("PING localhost(localhost (::1)) 56 data bytes"),
            (Some(Dialect::Iputils), "::1".into())
        );
        assert_eq!(
            d("PING ::1(::1) from ::1 lo: 56 data bytes"),
            (Some(Dialect::Iputils), "::1".into())
        );
        assert_eq!(
            d("PING 127.0.0.1 (127.0.0.1) from 127.0.0.1 lo: 56(84) bytes of data."),
            (Some(Dialect::Iputils), "127.0.0.1".into())
        );
        assert_eq!(
            d("PING ::1 (::1): 56 data bytes"),
            (Some(Dialect::Busybox), "::1".into())
        );
        assert_eq!(
            d("PING 127.0.0.1 (127.0.0.1): 56 data bytes"),
            (Some(Dialect::Busybox), "127.0.0.1".into())
        );
        assert_eq!(
            d("PING 127.0.0.1 (127.0.0.1) 56 bytes of data."),
            (Some(Dialect::Oping), "127.0.0.1".into())
        );
        assert_eq!(
            d("PING 127.0.0.1 (127.0.0.1) something else"),
            (None, "127.0.0.1".into())
        );
    }

    #[test]
    fn reads_each_pings_replies() {
        let r = |l: &str| match parse_line(l) {
            PingLine::Reply(r) => r,
            other => panic!("{l}: {other:?}"),
        };
        let b = r("64 bytes from ::1: seq=0 ttl=64 time=0.034 ms");
        assert_eq!(
            (b.style, b.seq, b.rtt_ns, b.half_unit_ns),
            (SeqStyle::Seq, 0, 34_000, 500)
        );
        assert_eq!(b.from, Some("::1".parse().unwrap()));
        let o = r("56 bytes from 127.0.0.1 (127.0.0.1): icmp_seq=1 ttl=64 time=0.03 ms");
        assert_eq!(
            (o.style, o.seq, o.rtt_ns, o.half_unit_ns),
            (SeqStyle::IcmpSeq, 1, 30_000, 5_000)
        );
        assert_eq!(Dialect::Oping.wire_seq(o.seq), 0);
        let f = r("::1       : [2], 64 bytes, 0.040 ms (0.041 avg, 0% loss)");
        assert_eq!((f.style, f.seq, f.rtt_ns), (SeqStyle::Fping, 2, 40_000));
        assert_eq!(
            (f.from, f.host.as_deref()),
            (Some("::1".parse().unwrap()), Some("::1"))
        );
        let f = r("localhost : [0], 64 bytes, 12.3 ms (12.3 avg, 0% loss)");
        assert_eq!((f.from, f.half_unit_ns), (None, 50_000));
        // iputils above 100 ms prints whole milliseconds.
        assert_eq!(
            r("64 bytes from 127.0.0.1: icmp_seq=9 ttl=64 time=123 ms").half_unit_ns,
            500_000
        );
        for other in [
            "64 bytes from 127.0.0.1: icmp_seq=1 ttl=64 time=0.045 ms (DUP!)",
            "127.0.0.1 : xmt/rcv/%loss = 3/3/0%, min/avg/max = 0.040/0.049/0.066",
            "127.0.0.1 is alive (0.032 ms)",
            "seq=1 time<1 ms",
        ] {
            assert_eq!(parse_line(other), PingLine::Other, "{other}");
        }
    }
}
