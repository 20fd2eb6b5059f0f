//! Loads the embedded eBPF object into the running kernel, attaches the
//! plan's probes, and reads the programs' maps and counters.

use std::{
    collections::BTreeMap,
    path::Path,
    sync::atomic::{AtomicU64, Ordering},
};

use anyhow::{Context as _, Result, bail};
use aya::{
    Btf, Ebpf,
    maps::{HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf},
    programs::{FEntry, FExit, KProbe, ProgramError, RawTracePoint, TracePoint},
};
use lotrace_common::{
    ProbeId, Stage,
    agg::{self, RowAgg},
    catalog::{Backend, maps, targets},
};

use crate::{
    kernel::{
        btf::KernelBtf,
        caps, config,
        mapped::Mapped,
        object::{load_object, page_size, parse_btf, refusal},
        slots::Slots,
        tracefs,
    },
    model::{
        kagg::KernelAgg,
        plan::{self, BackendChoice, Plan},
        unavailable::Unavailable,
    },
};

pub struct LoadOptions<'a> {
    pub btf_path: &'a Path,
    pub ring_size: u32,
    /// Let the programs' aya-log diagnostics through.
    pub verbose: bool,
    pub backend: BackendChoice,
    /// Trace even when a forced backend cannot observe some stages.
    pub allow_missing: bool,
    /// Aggregate per-stage statistics in the kernel instead of streaming
    /// events (`--summary-only`).
    pub summary_only: bool,
    /// Every program returns at once (`--floor`).
    pub floor: bool,
    /// Each stage's event to user space on its own, not assembled per
    /// echo in the kernel (`--per-event`).
    pub per_event: bool,
    /// What the traced ping pings, when known: the expected stages depend
    /// on it (see `model::journey::expected_stages`).
    pub target: Option<&'a str>,
}

/// Everything lotrace holds in the kernel. Dropping it detaches every
/// probe and unloads every program and map.
pub struct Tracer {
    ebpf: Ebpf,
    logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
    pub plan: Plan,
    /// Each attached probe with its label (`kprobe:__dev_queue_xmit`).
    pub attached: Vec<(ProbeId, String)>,
    pub drop_reasons: BTreeMap<u64, String>,
    /// The programs assemble each echo's events (see
    /// `lotrace_common::assemble`); user space reads the slots.
    pub assembles: bool,
    /// The programs' `LOST` counter, mapped.
    lost: Mapped,
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
        let mut caps = caps::capabilities(&btf);
        caps::probe_raw_tp(&mut caps);
        if matches!(opts.backend, BackendChoice::Auto | BackendChoice::Fentry) {
            caps::probe_fentry(&mut caps, opts.btf_path);
        } else {
            caps.fentry = Err(Unavailable::NotTried {
                backend: opts.backend.name(),
            });
        }
        let plan = plan::plan(&caps, opts.backend);
        if !plan.errors.is_empty() && !opts.allow_missing {
            bail!(
                "--backend {} cannot observe {}; use another backend, or --allow-missing to trace without those stages",
                opts.backend.name(),
                plan.errors_line()
            );
        }
        for (p, a) in &plan.always {
            if let plan::Avail::No(why) = a {
                bail!(
                    "cannot trace without {}: {why}",
                    plan::nominal_label(p.info())
                );
            }
        }
        if plan.stage(Stage::DevQueueXmit).backend.is_none() {
            bail!(
                "cannot trace: nothing can observe dev_queue_xmit, where the traced echo requests are recognised ({})",
                plan.stage(Stage::DevQueueXmit)
                    .missing
                    .clone()
                    .unwrap_or_default()
            );
        }

        let ret_arg: Vec<(ProbeId, usize)> = plan
            .to_attach()
            .iter()
            .filter(|(p, _)| p.info().backend() == Backend::Fentry && p.info().at_return)
            .map(|(p, target)| {
                btf.func_args(target)
                    .map(|n| (*p, n))
                    .with_context(|| format!("no prototype of {target} in the kernel's BTF"))
            })
            .collect::<Result<_>>()?;
        // Where each raw tracepoint's fields are, as resolved in `caps`.
        let mut raw = Vec::new();
        for (_, target) in plan.to_attach() {
            if let Some(tp) = target.strip_prefix(plan::RAW) {
                let fields = caps
                    .raw_tracepoints
                    .get(tp)
                    .with_context(|| format!("raw tracepoint {tp}: its fields are not resolved"))?;
                raw.extend_from_slice(fields);
            }
        }
        let mut config =
            config::build(&skb, &plan, &ret_arg, &raw, opts.target, opts.summary_only)?;
        config.floor = opts.floor as u8;
        config.per_thread = caps.preempt_rt as u8;
        config.assemble = !(opts.summary_only || opts.per_event) as u8;
        // Nothing is streamed when aggregating: the smallest ring will do.
        let ring_size = if opts.summary_only {
            page_size()
        } else {
            opts.ring_size
        };
        let mut ebpf = load_object(&config, ring_size, opts.verbose)?;
        let logger = if opts.verbose {
            aya_log::EbpfLogger::init(&mut ebpf).ok()
        } else {
            None
        };
        let lost = Mapped::array(&ebpf, maps::LOST, 8)?;
        let mut tracer = Tracer {
            ebpf,
            logger,
            plan,
            attached: Vec::new(),
            drop_reasons,
            assembles: config.assemble != 0,
            lost,
        };
        let needs_btf = tracer
            .plan
            .to_attach()
            .iter()
            .any(|(p, _)| p.info().backend() == Backend::Fentry);
        let aya_btf = if needs_btf {
            Some(parse_btf(opts.btf_path)?)
        } else {
            None
        };
        for (probe, target) in tracer.plan.to_attach() {
            let info = probe.info();
            tracer
                .attach(probe, &target, aya_btf.as_ref())
                .with_context(|| {
                    format!(
                        "attaching {} failed (try --backend tracepoint)",
                        plan::label(info, &target)
                    )
                })?;
            tracer.attached.push((probe, plan::label(info, &target)));
        }
        Ok(tracer)
    }

    fn attach(&mut self, probe: ProbeId, target: &str, btf: Option<&Btf>) -> Result<()> {
        let info = probe.info();
        let refused = |e: ProgramError| Unavailable::Refused(refusal(&e));
        if let Some(tp) = target.strip_prefix(plan::RAW) {
            // The raw program is named after its tracepoint.
            let (_, name) = tp.split_once(':').context("raw tracepoint target")?;
            let p: &mut RawTracePoint = self
                .ebpf
                .program_mut(name)
                .with_context(|| format!("program {name} missing from the object"))?
                .try_into()?;
            p.load().map_err(refused)?;
            p.attach(name)?;
            return Ok(());
        }
        let prog = self
            .ebpf
            .program_mut(info.program)
            .with_context(|| format!("program {} missing from the object", info.program))?;
        match (info.backend(), info.at_return) {
            (Backend::Tracepoint, _) => {
                let (cat, name) = info.tracepoint().expect("tracepoint");
                let p: &mut TracePoint = prog.try_into()?;
                p.load().map_err(refused)?;
                p.attach(cat, name)?;
            }
            (Backend::Kprobe, _) => {
                let p: &mut KProbe = prog.try_into()?;
                p.load().map_err(refused)?;
                p.attach(target, 0)?;
            }
            (Backend::Fentry, false) => {
                let p: &mut FEntry = prog.try_into()?;
                p.load(target, btf.context("BTF")?).map_err(refused)?;
                p.attach()?;
            }
            (Backend::Fentry, true) => {
                let p: &mut FExit = prog.try_into()?;
                p.load(target, btf.context("BTF")?).map_err(refused)?;
                p.attach()?;
            }
        }
        Ok(())
    }

    fn targets(&mut self) -> Result<BpfHashMap<&mut MapData, u32, u8>> {
        Ok(BpfHashMap::try_from(
            self.ebpf
                .map_mut(maps::TARGETS)
                .context("TARGETS map missing")?,
        )?)
    }

    /// Makes lotrace the traced command's spawner (`targets::SPAWNER`):
    /// what it spawns is traced from its fork on.
    pub fn spawner(&mut self, tgid: u32) -> Result<()> {
        self.targets()?.insert(tgid, targets::SPAWNER, 0)?;
        Ok(())
    }

    pub fn remove_target(&mut self, tgid: u32) -> Result<()> {
        self.targets()?.remove(&tgid)?;
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

    /// Events that did not fit in the ring buffer, read from lotrace's
    /// memory (see `kernel::mapped`).
    pub fn lost_events(&self) -> u64 {
        // SAFETY: the mapping's first 8 bytes, aligned; the programs only
        // ever add to them atomically.
        unsafe { &*(self.lost.base() as *const AtomicU64) }.load(Ordering::Relaxed)
    }

    /// Events the probes tried to emit: received + lost. A system call:
    /// only once the traced command is gone.
    pub fn submitted_events(&self) -> Result<u64> {
        let submitted: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(
            self.ebpf
                .map(maps::SUBMITTED)
                .context("SUBMITTED map missing")?,
        )?;
        Ok(submitted.get(&0, 0)?.iter().sum())
    }

    /// Times the kernel skipped one of our programs because another eBPF
    /// program was already running on that CPU (an interrupt's softirq
    /// arriving during a probe): those events never existed. The kernel
    /// counts them per program (`recursion_misses` in the program's fdinfo;
    /// kernels before 6.7 count them for fentry only). The wake-up probe
    /// is left out: the ring buffer wakes lotrace itself from inside our
    /// programs, so its misses are mostly those wake-ups, never a stage.
    pub fn missed_runs(&self) -> u64 {
        use std::os::fd::{AsFd, AsRawFd};
        self.ebpf
            .programs()
            .filter(|(name, _)| !name.contains("sched_wakeup"))
            .filter_map(|(_, p)| p.fd().ok())
            .filter_map(|fd| {
                let raw = fd.as_fd().as_raw_fd();
                std::fs::read_to_string(format!("/proc/self/fdinfo/{raw}")).ok()
            })
            .filter_map(|info| {
                info.lines()
                    .find_map(|l| l.strip_prefix("recursion_misses:"))
                    .and_then(|v| v.trim().parse::<u64>().ok())
            })
            .sum()
    }

    /// What the programs aggregated (`--summary-only`).
    pub fn aggregate(&self) -> Result<KernelAgg> {
        let map = |name: &str| {
            self.ebpf
                .map(name)
                .with_context(|| format!("{name} map missing"))
        };
        let rows: PerCpuArray<&MapData, RowAgg> = PerCpuArray::try_from(map(maps::AGG_ROWS)?)?;
        let count: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(map(maps::AGG_COUNT)?)?;
        let mut out = KernelAgg::default();
        for c in 0..agg::counters::COUNT {
            // Outcome slots move per CPU (see agg::counters): a wrapping sum.
            let per_cpu = count.get(&c, 0)?;
            out.counters
                .push(per_cpu.iter().fold(0u64, |a, n| a.wrapping_add(*n)));
        }
        for r in 0..agg::ROWS as u32 {
            out.rows.push(rows.get(&r, 0)?.iter().copied().collect());
        }
        let flow_rows: PerCpuArray<&MapData, RowAgg> =
            PerCpuArray::try_from(map(maps::FLOW_ROWS)?)?;
        for r in 0..agg::FLOW_ROWS as u32 {
            out.flow_rows
                .push(flow_rows.get(&r, 0)?.iter().copied().collect());
        }
        let flows: aya::maps::Array<&MapData, u32> =
            aya::maps::Array::try_from(map(maps::FLOW_COUNT)?)?;
        out.flows = flows.get(&0, 0)? as u64;
        Ok(out)
    }

    /// The programs' slots (see `lotrace_common::assemble`), mapped into
    /// lotrace's memory; `None` when they do not assemble.
    pub fn slots(&self) -> Result<Option<Slots>> {
        if !self.assembles {
            return Ok(None);
        }
        Slots::map(&self.ebpf).map(Some)
    }

    pub fn flush_logs(&mut self) {
        if let Some(l) = self.logger.as_mut() {
            l.flush();
        }
    }
}
