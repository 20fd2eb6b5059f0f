//! Loads the embedded eBPF object into the running kernel and attaches its
//! probes. The only part of lotrace, with the trace command, that touches
//! the kernel.

use std::{collections::BTreeMap, path::Path};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf},
    programs::TracePoint,
};
use lotrace_common::{
    Config, ProbeId,
    catalog::{PROBES, TP_FIELDS, maps},
};

use crate::{btf::KernelBtf, report::ProbeStatus, tracefs};

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lotrace"));

pub struct LoadOptions<'a> {
    pub btf_path: &'a Path,
    pub ring_size: u32,
    /// Let the programs' aya-log diagnostics through.
    pub verbose: bool,
}

/// Everything lotrace holds in the kernel. Dropping it detaches every
/// probe and unloads every program and map.
pub struct Tracer {
    ebpf: Ebpf,
    logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
    pub probes: Vec<ProbeStatus>,
    pub drop_reasons: BTreeMap<u64, String>,
}

/// Checks that nothing needed is missing before anything is loaded.
pub fn preflight() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "tracing needs root (to load eBPF programs): run it with sudo, or through `cargo xtask run`"
        );
    }
    Ok(())
}

impl Tracer {
    pub fn load(opts: &LoadOptions) -> Result<Tracer> {
        let btf = KernelBtf::open(opts.btf_path)?;
        let skb = btf.skb_offsets()?;
        let drop_reasons = btf
            .enum_names("skb_drop_reason", "SKB_DROP_REASON_")
            .unwrap_or_default();
        if tracefs::ensure_mounted()? {
            eprintln!("lotrace: mounted tracefs at {}", tracefs::TRACEFS);
        }

        let mut config = Config::zeroed();
        config.skb_head = skb.head;
        config.skb_network_header = skb.network_header;
        config.skb_len = skb.len;
        config.skb_sk = skb.sk;
        let mut formats = BTreeMap::new();
        for (field, probe, name) in TP_FIELDS.iter() {
            let (cat, tp) = probe.info().attach_point();
            if !tracefs::tracepoint_exists(cat, tp) {
                continue;
            }
            let offsets = match formats.entry((cat, tp)) {
                std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::btree_map::Entry::Vacant(e) => {
                    e.insert(tracefs::field_offsets(cat, tp)?)
                }
            };
            if let Some(off) = offsets.get(*name) {
                config.tp[*field as usize] = *off;
            }
        }

        let level: u8 = if opts.verbose { u8::MAX } else { 0 };
        let mut ebpf = EbpfLoader::new()
            .override_global(maps::CONFIG, &config, true)
            .override_global(aya_log::LEVEL, &level, false)
            .map_max_entries(maps::EVENTS, opts.ring_size)
            .load(OBJECT)
            .map_err(|e| anyhow!("the kernel refused lotrace's eBPF object: {e}"))?;
        let logger = if opts.verbose {
            aya_log::EbpfLogger::init(&mut ebpf).ok()
        } else {
            None
        };

        let mut tracer = Tracer {
            ebpf,
            logger,
            probes: Vec::new(),
            drop_reasons,
        };
        for info in PROBES.iter() {
            let (cat, name) = info.attach_point();
            let status = if !tracefs::tracepoint_exists(cat, name) {
                Err(format!("this kernel has no tracepoint {cat}:{name}"))
            } else {
                tracer
                    .attach_tracepoint(info.program, cat, name)
                    .map_err(|e| format!("{e:#}"))
            };
            if let Err(why) = &status
                && info.required
            {
                bail!("cannot trace without tracepoint {cat}:{name}: {why}");
            }
            tracer.probes.push(ProbeStatus {
                probe: info.id,
                error: status.err(),
            });
        }
        Ok(tracer)
    }

    fn attach_tracepoint(&mut self, program: &str, cat: &str, name: &str) -> Result<()> {
        let prog: &mut TracePoint = self
            .ebpf
            .program_mut(program)
            .with_context(|| format!("program {program} missing from the object"))?
            .try_into()?;
        prog.load()
            .map_err(|e| anyhow!("the kernel refused to load {program}: {e}"))?;
        prog.attach(cat, name)
            .map_err(|e| anyhow!("attaching to {cat}:{name} failed: {e}"))?;
        Ok(())
    }

    /// Adds a process to the traced set, before it sends anything.
    pub fn add_target(&mut self, tgid: u32) -> Result<()> {
        let mut targets: BpfHashMap<&mut MapData, u32, u8> = BpfHashMap::try_from(
            self.ebpf
                .map_mut(maps::TARGETS)
                .context("TARGETS map missing")?,
        )?;
        targets.insert(tgid, 1, 0)?;
        Ok(())
    }

    pub fn remove_target(&mut self, tgid: u32) -> Result<()> {
        let mut targets: BpfHashMap<&mut MapData, u32, u8> = BpfHashMap::try_from(
            self.ebpf
                .map_mut(maps::TARGETS)
                .context("TARGETS map missing")?,
        )?;
        targets.remove(&tgid)?;
        Ok(())
    }

    /// Takes the event ring buffer out, to be polled.
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>> {
        let map = self
            .ebpf
            .take_map(maps::EVENTS)
            .context("EVENTS map missing")?;
        Ok(RingBuf::try_from(map)?)
    }

    /// Failed reservations so far, summed over CPUs.
    pub fn lost_events(&self) -> Result<u64> {
        let lost: PerCpuArray<&MapData, u64> =
            PerCpuArray::try_from(self.ebpf.map(maps::LOST).context("LOST map missing")?)?;
        Ok(lost.get(&0, 0)?.iter().sum())
    }

    pub fn flush_logs(&mut self) {
        if let Some(l) = self.logger.as_mut() {
            l.flush();
        }
    }

    pub fn attached(&self, probe: ProbeId) -> bool {
        self.probes
            .iter()
            .any(|p| p.probe == probe && p.error.is_none())
    }
}
