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

/// One line of ping's output, as far as lotrace cares.
#[derive(Debug, PartialEq)]
pub enum PingLine {
    /// `PING host (addr) ...`: the address it resolved to.
    Header {
        host: String,
        addr: String,
    },
    /// `64 bytes from ...: icmp_seq=N ttl=64 time=0.045 ms`
    Reply {
        seq: u16,
        rtt_ns: u64,
    },
    Other,
}

pub fn parse_line(line: &str) -> PingLine {
    if let Some(rest) = line.strip_prefix("PING ") {
        // iputils: `PING host (addr) 56(84) bytes`, for IPv6
        // `PING host(name (addr)) 56 data bytes`; busybox:
        // `PING host (addr): 56 data bytes`. The address is the first
        // parenthesised text that parses as one.
        let host: String = rest
            .chars()
            .take_while(|c| !c.is_whitespace() && *c != '(')
            .collect();
        let addr = rest.match_indices('(').find_map(|(i, _)| {
            let inner = &rest[i + 1..];
            let end = inner.find([')', '('])?;
            let cand = &inner[..end];
            cand.parse::<std::net::IpAddr>()
                .ok()
                .map(|_| cand.to_string())
        });
        return match addr {
            Some(addr) if !host.is_empty() => PingLine::Header { host, addr },
            _ => PingLine::Other,
        };
    }
    let mut seq = None;
    let mut time = None;
    let mut words = line.split_whitespace().peekable();
    while let Some(w) = words.next() {
        // iputils prints icmp_seq=, busybox seq=.
        if let Some(v) = w
            .strip_prefix("icmp_seq=")
            .or_else(|| w.strip_prefix("seq="))
        {
            seq = v.parse::<u16>().ok();
        } else if let Some(v) = w.strip_prefix("time=") {
            let unit = words.peek().copied().unwrap_or("ms");
            time = parse_time(v, unit);
        }
    }
    match (seq, time) {
        (Some(seq), Some(rtt_ns)) => PingLine::Reply { seq, rtt_ns },
        _ => PingLine::Other,
    }
}

/// ping prints `time=0.045 ms` (or `time=1234 ms`; `time<1 ms` is not
/// a measurement and is skipped).
fn parse_time(v: &str, unit: &str) -> Option<u64> {
    let x: f64 = v.parse().ok()?;
    let scale = match unit {
        "ms" => 1e6,
        "us" | "µs" => 1e3,
        "s" => 1e9,
        _ => return None,
    };
    (x.is_finite() && x >= 0.0).then(|| (x * scale).round() as u64)
}

/// The resolution of ping's printed time, in ns, for the number as printed:
/// iputils prints three decimals below 100 ms.
pub const PING_RESOLUTION_NS: u64 = 1_000;

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
                addr: "127.0.0.1".into()
            }
        );
        assert_eq!(
            parse_line("64 bytes from 127.0.0.1: icmp_seq=3 ttl=64 time=0.045 ms"),
            PingLine::Reply {
                seq: 3,
                rtt_ns: 45_000
            }
        );
        assert_eq!(
            parse_line("64 bytes from localhost (::1): icmp_seq=12 ttl=64 time=1.20 ms"),
            PingLine::Reply {
                seq: 12,
                rtt_ns: 1_200_000
            }
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
    }
}
