//! What a guest's traced HTTP request must show: every TCP segment
//! through lo and NET_RX, TCP's own stages by the forced backend's
//! probes, in the kernel's order, and the handshake and the request paired.

use anyhow::{Context as _, Result, ensure};
use serde_json::Value;

use super::checks::{json_lines, of_backend, summary};
use crate::vm::Run;

/// One HTTP request over TCP traced with `backend` forced: every segment
/// went out through lo and back in through NET_RX, TCP's receive was seen
/// by the backend's own function probes, and the handshake and the
/// request's exchange were paired, each direction read.
pub fn check_tcp(run: &Run, backend: &str) -> Result<()> {
    ensure!(run.exit == 0, "lotrace trace exited with {}", run.exit);
    let lines = json_lines(run)?;
    let summary = summary(&lines)?;
    ensure!(
        summary["lost_events"] == 0,
        "events lost: {}",
        summary["lost_events"]
    );
    let packets: Vec<&Value> = lines.iter().filter(|v| v["type"] == "packet").collect();
    ensure!(!packets.is_empty(), "no TCP segment");
    let stages = |p: &Value| -> Vec<(String, String)> {
        p["events"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| {
                (
                    e["stage"].as_str().unwrap_or("?").to_string(),
                    e["probe"].as_str().unwrap_or("?").to_string(),
                )
            })
            .collect()
    };
    for p in &packets {
        let st = stages(p);
        for want in [
            "dev_queue_xmit",
            "loopback_xmit",
            "netif_rx",
            "netif_receive_skb",
        ] {
            ensure!(
                st.iter().any(|(s, _)| s == want),
                "segment {} {} has no {want}: {st:?}",
                p["number"],
                p["direction"]
            );
        }
    }
    // The client's request starts at its write, then TCP's send, and the
    // send's return follows.
    let request = packets
        .iter()
        .find(|p| p["direction"] == "forth" && p["payload"].as_u64().unwrap_or(0) > 0)
        .context("no request segment")?;
    let st = stages(request);
    ensure!(
        st.first().is_some_and(|(s, _)| s == "sendto")
            && st.iter().any(|(s, _)| s == "sock_sendmsg"),
        "the request segment does not start at its send: {st:?}"
    );
    // TCP builds the segment, hands it to IP by the socket's queue_xmit,
    // then IP output; a listener's SYN-ACK is built and sent without
    // either (tcp_v4_send_synack, tcp_v6_send_synack).
    let at = |st: &[(String, String)], s: &str| st.iter().position(|(x, _)| x == s);
    ensure!(
        matches!(
            (at(&st, "tcp_transmit_skb"), at(&st, "ip_queue_xmit"), at(&st, "ip_output")),
            (Some(t), Some(q), Some(o)) if t < q && q < o
        ),
        "the request segment's transmit is not tcp_transmit_skb, ip_queue_xmit, ip_output: {st:?}"
    );
    let synack = packets
        .iter()
        .find(|p| {
            let f = p["tcp_flags"].to_string();
            p["direction"] == "back" && f.contains("SYN") && f.contains("ACK")
        })
        .context("no SYN-ACK")?;
    let st = stages(synack);
    ensure!(
        at(&st, "tcp_transmit_skb").is_none() && at(&st, "ip_queue_xmit").is_none(),
        "the SYN-ACK shows a stage the kernel does not run for it: {st:?}"
    );
    // A read that found its data queued shows where it began: after the
    // segment's receive and queueing (in whichever task TCP did them),
    // before its copy, by this backend (whether a read found it so
    // depends on timing).
    for p in &packets {
        let st = stages(p);
        if let Some(r) = at(&st, "tcp_recvmsg") {
            let queued_before = [
                "netif_receive_skb",
                "tcp_rcv",
                "tcp_rcv_established",
                "tcp_data_queue",
                "sock_deliver",
            ]
            .iter()
            .all(|s| st.iter().rposition(|(x, _)| x == s).is_none_or(|i| i < r));
            ensure!(
                of_backend(&st[r].1, backend)
                    && at(&st, "netif_receive_skb").is_some()
                    && queued_before
                    && st[r..].iter().any(|(s, _)| s == "copy_to_user"),
                "segment {} {}: tcp_recvmsg out of place: {st:?}",
                p["number"],
                p["direction"]
            );
        }
    }
    // TCP's own stages, each by this backend's probe.
    for want in [
        "tcp_sendmsg",
        "tcp_transmit_skb",
        "ip_queue_xmit",
        "tcp_rcv",
        "tcp_rcv_established",
    ] {
        let by = packets
            .iter()
            .flat_map(|p| stages(p))
            .find(|(s, _)| s == want)
            .with_context(|| format!("no segment shows {want}"))?;
        ensure!(
            of_backend(&by.1, backend),
            "{want} seen by {}, not {backend}",
            by.1
        );
    }
    let xs: Vec<&Value> = lines.iter().filter(|v| v["type"] == "exchange").collect();
    let kinds = |k: &str| xs.iter().filter(|x| x["kind"] == k).count();
    ensure!(kinds("handshake") == 1, "handshakes: {xs:?}");
    ensure!(kinds("request") == 1, "exchanges: {xs:?}");
    let x = xs
        .iter()
        .find(|x| x["kind"] == "request")
        .context("no exchange")?;
    for way in ["request", "response"] {
        ensure!(
            x[way]["bytes"].as_u64().unwrap_or(0) > 0 && x[way]["reach"] == "read",
            "the {way} was not read: {x}"
        );
    }
    Ok(())
}
