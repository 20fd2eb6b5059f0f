//! Loads the embedded eBPF object into the running kernel and attaches its
//! probes. With the trace command, the only part of lotrace that touches
//! the kernel.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    Btf, Ebpf, EbpfLoader, Endianness,
    maps::{HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf},
    programs::{FEntry, FExit, KProbe, TracePoint},
};
use lotrace_common::{
    Config, ProbeId, Stage,
    agg::{self, RowAgg},
    catalog::{Backend, PROBES, TP_FIELDS, counters, maps},
};

use crate::{
    kernel::btf::KernelBtf,
    kernel::tracefs,
    model::journey::expected_for,
    model::kagg::{self, KernelAgg},
    model::plan::{self, BackendChoice, Caps, Plan},
};

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lotrace"));

const KPROBE_PMU: &str = "/sys/bus/event_source/devices/kprobe";

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
}

/// Checks that nothing needed is missing before anything is loaded.
pub fn preflight() -> Result<()> {
    if !is_root() {
        bail!(
            "tracing needs root (to load eBPF programs): run it with sudo, or through `cargo xtask run`"
        );
    }
    Ok(())
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The kernel functions the catalog may probe.
fn catalog_functions() -> BTreeSet<&'static str> {
    PROBES
        .iter()
        .flat_map(|p| p.functions().iter().copied())
        .collect()
}

/// Names among `wanted` listed in a symbol file's lines: the first word that
/// matches, ignoring a trailing `[module]`.
fn names_in(text: &str, column: usize, wanted: &BTreeSet<&str>) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.split_whitespace().nth(column))
        .filter(|n| wanted.contains(n))
        .map(str::to_string)
        .collect()
}

/// What this kernel allows, as far as can be seen without loading anything;
/// fentry is checked by [`probe_fentry`].
pub fn capabilities(btf: &KernelBtf) -> Caps {
    let wanted = catalog_functions();
    let tracefs_state = if Path::new(tracefs::TRACEFS).join("events").is_dir() {
        Ok(())
    } else if is_root() {
        Err("tracefs is not mounted".to_string())
    } else {
        Err("not checked: tracefs is not mounted or not readable without root".to_string())
    };
    let tracepoints = PROBES
        .iter()
        .filter_map(|p| p.tracepoint())
        .filter(|(c, n)| tracefs::tracepoint_exists(c, n))
        .map(|(c, n)| format!("{c}:{n}"))
        .collect();
    let kprobe = if Path::new(KPROBE_PMU).exists() {
        Ok(())
    } else {
        Err(format!(
            "this kernel is built without CONFIG_KPROBES (no kprobe PMU at {KPROBE_PMU})"
        ))
    };
    // Symbol lines: `address type name [module]`; only functions (t/T).
    let kallsyms = std::fs::read_to_string("/proc/kallsyms")
        .map(|t| {
            t.lines()
                .filter(|l| matches!(l.split_whitespace().nth(1), Some("t" | "T")))
                .filter_map(|l| l.split_whitespace().nth(2))
                .filter(|n| wanted.contains(n))
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    let btf_funcs = wanted
        .iter()
        .filter(|f| btf.has_func(f))
        .map(|f| f.to_string())
        .collect();
    let traceable =
        std::fs::read_to_string(Path::new(tracefs::TRACEFS).join("available_filter_functions"))
            .ok()
            .map(|t| names_in(&t, 0, &wanted));
    Caps {
        tracefs: tracefs_state,
        tracepoints,
        kprobe,
        fentry: Err("not checked: loading a test program needs root".into()),
        kallsyms,
        btf_funcs,
        traceable,
    }
}

fn load_object(config: &Config, ring_size: u32, verbose: bool) -> Result<Ebpf> {
    let level: u8 = if verbose { u8::MAX } else { 0 };
    let mut loader = EbpfLoader::new();
    loader
        .override_global(maps::CONFIG, config, true)
        .override_global(aya_log::LEVEL, &level, false)
        .map_max_entries(maps::EVENTS, ring_size);
    if config.summary_only == 0 {
        // The aggregation maps are per CPU and large: allocate them only
        // when they are used.
        for m in [maps::ECHOES, maps::AGG_ROWS] {
            loader.map_max_entries(m, 1);
        }
    }
    loader
        .load(OBJECT)
        .map_err(|e| anyhow!("the kernel refused lotrace's eBPF object: {e}"))
}

fn page_size() -> u32 {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if n > 0 { n as u32 } else { 4096 }
}

fn parse_btf(path: &Path) -> Result<Btf> {
    Btf::parse_file(path, Endianness::default())
        .map_err(|e| anyhow!("cannot parse kernel BTF {}: {e}", path.display()))
}

/// Words for why the kernel refused a program.
fn refusal(e: &(dyn std::error::Error + 'static)) -> String {
    let mut src: Option<&dyn std::error::Error> = Some(e);
    while let Some(err) = src {
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && let Some(code) = io.raw_os_error()
        {
            let name = match code {
                libc::EPERM => "EPERM",
                libc::EACCES => "EACCES",
                libc::EINVAL => "EINVAL",
                libc::ENOENT => "ENOENT",
                libc::EOPNOTSUPP | 524 => "EOPNOTSUPP",
                _ => "error",
            };
            return if name == "error" {
                format!("the kernel refused to load the program ({io})")
            } else {
                format!("the kernel refused to load the program ({name})")
            };
        }
        src = err.source();
    }
    format!("the kernel refused to load the program ({e})")
}

/// Can fentry programs be loaded here? Loads one, on a function the kernel
/// has, in a throwaway copy of the object.
pub fn probe_fentry(caps: &mut Caps, btf_path: &Path) {
    if !is_root() {
        return;
    }
    let Some((program, function)) = PROBES
        .iter()
        .filter(|p| p.backend() == Backend::Fentry && !p.at_return)
        .find_map(|p| {
            p.functions()
                .iter()
                .find(|f| caps.btf_funcs.contains(**f))
                .map(|f| (p.program, *f))
        })
    else {
        caps.fentry = Err("no probed function is in the kernel's BTF".into());
        return;
    };
    let result = (|| -> Result<(), String> {
        let btf = parse_btf(btf_path).map_err(|e| e.to_string())?;
        let mut ebpf = load_object(&Config::zeroed(), 4096, false).map_err(|e| e.to_string())?;
        let prog: &mut FEntry = ebpf
            .program_mut(program)
            .ok_or("program missing")?
            .try_into()
            .map_err(|e: aya::programs::ProgramError| e.to_string())?;
        prog.load(function, &btf).map_err(|e| refusal(&e))?;
        Ok(())
    })();
    caps.fentry = result;
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
        let mut caps = capabilities(&btf);
        if matches!(opts.backend, BackendChoice::Auto | BackendChoice::Fentry) {
            probe_fentry(&mut caps, opts.btf_path);
        } else {
            caps.fentry = Err(format!(
                "not tried: --backend {}",
                backend_arg(opts.backend)
            ));
        }
        let plan = plan::plan(&caps, opts.backend);
        if !plan.errors.is_empty() && !opts.allow_missing {
            bail!(
                "--backend {} cannot observe {}; use another backend, or --allow-missing to trace without those stages",
                backend_arg(opts.backend),
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

        let mut config = Config::zeroed();
        config.skb_head = skb.head;
        config.skb_network_header = skb.network_header;
        config.skb_len = skb.len;
        config.skb_sk = skb.sk;
        config.sk_type = skb.sk_type;
        config.skb_dev = skb.dev;
        config.dev_name = skb.dev_name;
        config.net_rx_probe = plan.start_probe(Stage::NetRxAction).map_or(0, |p| p as u8);
        config.backlog_probe = plan
            .start_probe(Stage::ProcessBacklog)
            .map_or(0, |p| p as u8);
        if opts.summary_only {
            let covered: Vec<Stage> = plan
                .stages
                .iter()
                .filter(|s| s.backend.is_some())
                .map(|s| s.stage)
                .collect();
            let (leg, any) = kagg::expect_masks(&expected_for(&covered));
            config.summary_only = 1;
            config.expect_leg = leg;
            config.expect_any = any;
            config.close_stage = kagg::close_stage(&covered) as u8;
            for p in PROBES.iter().filter(|p| p.at_return) {
                let id = p.id as usize;
                config.ret_probes[id / 64] |= 1 << (id % 64);
            }
        }
        let mut formats = BTreeMap::new();
        for (field, probe, name) in TP_FIELDS.iter() {
            let Some((cat, tp)) = probe.info().tracepoint() else {
                continue;
            };
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
        let mut tracer = Tracer {
            ebpf,
            logger,
            plan,
            attached: Vec::new(),
            drop_reasons,
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
        let prog = self
            .ebpf
            .program_mut(info.program)
            .with_context(|| format!("program {} missing from the object", info.program))?;
        match (info.backend(), info.at_return) {
            (Backend::Tracepoint, _) => {
                let (cat, name) = info.tracepoint().expect("tracepoint");
                let p: &mut TracePoint = prog.try_into()?;
                p.load().map_err(|e| anyhow!(refusal(&e)))?;
                p.attach(cat, name)?;
            }
            (Backend::Kprobe, _) => {
                let p: &mut KProbe = prog.try_into()?;
                p.load().map_err(|e| anyhow!(refusal(&e)))?;
                p.attach(target, 0)?;
            }
            (Backend::Fentry, false) => {
                let p: &mut FEntry = prog.try_into()?;
                p.load(target, btf.context("BTF")?)
                    .map_err(|e| anyhow!(refusal(&e)))?;
                p.attach()?;
            }
            (Backend::Fentry, true) => {
                let p: &mut FExit = prog.try_into()?;
                p.load(target, btf.context("BTF")?)
                    .map_err(|e| anyhow!(refusal(&e)))?;
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

    /// Adds a process to the traced set, before it sends anything.
    pub fn add_target(&mut self, tgid: u32) -> Result<()> {
        self.targets()?.insert(tgid, 1, 0)?;
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

    /// Failed reservations so far, summed over CPUs.
    fn counter(&self, idx: u32) -> Result<u64> {
        let lost: PerCpuArray<&MapData, u64> =
            PerCpuArray::try_from(self.ebpf.map(maps::LOST).context("LOST map missing")?)?;
        Ok(lost.get(&idx, 0)?.iter().sum())
    }

    /// Events that did not fit in the ring buffer.
    pub fn lost_events(&self) -> Result<u64> {
        self.counter(counters::LOST_IDX)
    }

    /// Events the probes tried to emit: received + lost.
    pub fn submitted_events(&self) -> Result<u64> {
        self.counter(counters::SUBMITTED_IDX)
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
            out.counters.push(count.get(&c, 0)?.iter().sum());
        }
        for r in 0..agg::ROWS as u32 {
            out.rows.push(rows.get(&r, 0)?.iter().copied().collect());
        }
        Ok(out)
    }

    pub fn flush_logs(&mut self) {
        if let Some(l) = self.logger.as_mut() {
            l.flush();
        }
    }
}

pub fn backend_arg(b: BackendChoice) -> &'static str {
    match b {
        BackendChoice::Auto => "auto",
        BackendChoice::Fentry => "fentry",
        BackendChoice::Kprobe => "kprobe",
        BackendChoice::Tracepoint => "tracepoint",
    }
}
