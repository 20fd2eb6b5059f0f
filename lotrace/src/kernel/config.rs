//! The programs' `CONFIG` global: the kernel's layouts (from BTF and
//! tracefs), the plan's choices, and what in-kernel aggregation must know
//! of the journey.

use std::collections::{BTreeMap, BTreeSet, btree_map::Entry};

use anyhow::{Result, ensure};
use lotrace_common::{
    Config, ProbeId, Stage, TpField,
    agg::STAGE_ROWS,
    assemble::positions,
    catalog::{Backend, PROBES, TP_FIELDS},
    config::RawField,
    journey::Rules,
};

use crate::{
    kernel::{btf::SkbOffsets, tracefs},
    model::{journey::expected_stages, plan::Plan},
};

/// `ret_arg` is, of each fexit probe the plan attaches, how many arguments
/// its function takes; `raw`, of each field a raw tracepoint reads, the
/// members to follow from its argument.
pub fn build(
    skb: &SkbOffsets,
    plan: &Plan,
    ret_arg: &[(ProbeId, usize)],
    raw: &[(TpField, RawField)],
    target: Option<&str>,
    summary_only: bool,
) -> Result<Config> {
    let mut config = Config::zeroed();
    config.skb_head = skb.head;
    config.skb_network_header = skb.network_header;
    config.skb_len = skb.len;
    config.skb_tail = skb.tail;
    config.skb_sk = skb.sk;
    config.sk_type = skb.sk_type;
    config.skb_dev = skb.dev;
    config.dev_name = skb.dev_name;
    config.dev_net = skb.dev_net;
    config.sk_net = skb.sk_net;
    config.task_files = skb.task_files;
    config.files_fdt = skb.files_fdt;
    config.fdt_fd = skb.fdt_fd;
    config.fdt_max_fds = skb.fdt_max_fds;
    config.file_private_data = skb.file_private_data;
    config.socket_sk = skb.socket_sk;
    config.socket_file = skb.socket_file;
    config.sk_ipv6only_bit = skb.sk_ipv6only_bit;
    config.sk_socket = skb.sk_socket;
    config.socket_ino = skb.socket_ino;
    config.sk_protocol = skb.sk_protocol;
    config.sk_rcvq_len = skb.sk_rcvq_len;
    config.udp_readq_len = skb.udp_readq_len;
    for &(p, n) in ret_arg {
        // The programs read the return value after at most six arguments
        // (see lotrace-ebpf's fexit_ret), as many as x86-64 passes in
        // registers.
        ensure!(
            n <= 6,
            "{}: its function takes {n} arguments; fexit returns are read after at most 6",
            p.info().program
        );
        config.ret_arg[p as usize] = n as u8;
    }
    for &(f, r) in raw {
        config.raw[f as usize] = r;
    }
    config.net_rx_probe = plan.start_probe(Stage::NetRxAction).map_or(0, |p| p as u8);
    config.lo_xmit_fn = matches!(
        plan.stage(Stage::LoopbackXmit).backend,
        Some(Backend::Kprobe | Backend::Fentry)
    ) as u8;
    config.backlog_probe = plan
        .start_probe(Stage::ProcessBacklog)
        .map_or(0, |p| p as u8);
    config.slot_pos = slot_positions(plan);
    // The journey's meaning, as the programs need it: to aggregate, and
    // to know when a streamed echo's slot is complete.
    let rules = Rules::for_covered(&expected_stages(&plan.covered(), target));
    config.summary_only = summary_only as u8;
    config.expect_leg = rules.expect.leg;
    config.expect_any = rules.expect.any;
    config.close_stage = rules.close_stage;
    for p in PROBES.iter().filter(|p| p.at_return) {
        let id = p.id as usize;
        config.ret_probes[id / 64] |= 1 << (id % 64);
    }
    tracepoint_fields(&mut config)?;
    Ok(config)
}

/// Where each row the plan's probes report goes in an echo's slot: the
/// rows no attached probe reports take no room (see
/// `lotrace_common::assemble::positions`).
fn slot_positions(plan: &Plan) -> [u8; STAGE_ROWS] {
    let mut rows: BTreeSet<(Stage, bool)> = plan
        .to_attach()
        .iter()
        .filter_map(|(p, _)| Some((p.info().stage?, p.info().at_return)))
        .collect();
    // A stage observed through another's tracepoints (`ndo_start_xmit`
    // through loopback's) is reported by their programs.
    for s in plan.covered() {
        if let Some(t) = s.shares_tracepoints_of() {
            let theirs: Vec<bool> = rows
                .iter()
                .filter(|(st, _)| *st == t)
                .map(|(_, r)| *r)
                .collect();
            rows.extend(theirs.into_iter().map(|r| (s, r)));
        }
    }
    positions(|_, s, ret| rows.contains(&(s, ret)))
}

/// The byte offsets of the tracepoint fields the programs read, from each
/// tracepoint's format on this kernel.
fn tracepoint_fields(config: &mut Config) -> Result<()> {
    let mut formats = BTreeMap::new();
    for (field, probe, name) in TP_FIELDS.iter() {
        let Some((cat, tp)) = probe.info().tracepoint() else {
            continue;
        };
        if !tracefs::tracepoint_exists(cat, tp) {
            continue;
        }
        let offsets = match formats.entry((cat, tp)) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => e.insert(tracefs::field_offsets(cat, tp)?),
        };
        if let Some(off) = offsets.get(*name) {
            config.tp[*field as usize] = *off;
        }
    }
    Ok(())
}
