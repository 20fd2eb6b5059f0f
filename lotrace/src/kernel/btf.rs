//! Struct layouts and enum names read from the running kernel's BTF, so no
//! kernel layout is compiled into lotrace.

use std::{collections::BTreeMap, path::Path};

use anyhow::{Context as _, Result, anyhow, bail};
use btf_rs::{Btf, Type};
use lotrace_common::{
    catalog::RawSpec,
    config::{RAW_HOPS, RawField},
};

pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// Byte offsets inside `struct sk_buff` that the programs read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SkbOffsets {
    pub head: u32,
    pub network_header: u32,
    pub len: u32,
    pub tail: u32,
    pub sk: u32,
    /// `struct sock.sk_type`.
    pub sk_type: u32,
    /// `sk_buff.dev` and `net_device.name`.
    pub dev: u32,
    pub dev_name: u32,
    /// `net_device.nd_net.net` and `sock.__sk_common.skc_net.net` (0: no
    /// network namespaces in this kernel).
    pub dev_net: u32,
    pub sk_net: u32,
    /// From a file descriptor to its socket (see `Config::task_files`).
    pub task_files: u32,
    pub files_fdt: u32,
    pub fdt_fd: u32,
    pub fdt_max_fds: u32,
    pub file_private_data: u32,
    pub socket_sk: u32,
    pub socket_file: u32,
    pub sk_protocol: u32,
    /// `sock_common.skc_ipv6only`'s bit in `struct sock`, plus one (0: not
    /// found).
    pub sk_ipv6only_bit: u32,
    /// `sock.sk_socket`, and `socket_alloc.vfs_inode.i_ino` (0: not
    /// found).
    pub sk_socket: u32,
    pub socket_ino: u32,
    /// `sock.sk_receive_queue.qlen` and `udp_sock.reader_queue.qlen` (0:
    /// not found).
    pub sk_rcvq_len: u32,
    pub udp_readq_len: u32,
}

pub struct KernelBtf {
    btf: Btf,
}

impl KernelBtf {
    pub fn open(path: &Path) -> Result<KernelBtf> {
        if !path.exists() {
            bail!(
                "no kernel BTF at {}: lotrace needs a kernel built with CONFIG_DEBUG_INFO_BTF=y",
                path.display()
            );
        }
        let btf = Btf::from_file(path)
            .map_err(|e| anyhow!("cannot read kernel BTF from {}: {e}", path.display()))?;
        Ok(KernelBtf { btf })
    }

    pub fn skb_offsets(&self) -> Result<SkbOffsets> {
        let off = |name| {
            self.member_offset("sk_buff", name)
                .with_context(|| format!("struct sk_buff.{name} in kernel BTF"))
        };
        Ok(SkbOffsets {
            head: off("head")?,
            network_header: off("network_header")?,
            len: off("len")?,
            tail: off("tail")?,
            sk: off("sk")?,
            sk_type: self
                .member_offset("sock", "sk_type")
                .context("struct sock.sk_type in kernel BTF")?,
            dev: off("dev")?,
            dev_name: self
                .member_offset("net_device", "name")
                .context("struct net_device.name in kernel BTF")?,
            task_files: self.offset("task_struct", "files")?,
            files_fdt: self.offset("files_struct", "fdt")?,
            fdt_fd: self.offset("fdtable", "fd")?,
            fdt_max_fds: self.offset("fdtable", "max_fds")?,
            file_private_data: self.offset("file", "private_data")?,
            socket_sk: self.offset("socket", "sk")?,
            socket_file: self.offset("socket", "file")?,
            sk_protocol: self.offset("sock", "sk_protocol")?,
            sk_ipv6only_bit: self.ipv6only_bit().unwrap_or(0),
            sk_socket: self.offset("sock", "sk_socket").unwrap_or(0),
            socket_ino: self
                .offset("socket_alloc", "vfs_inode")
                .and_then(|i| Ok(i + self.offset("inode", "i_ino")?))
                .unwrap_or(0),
            dev_net: self.net_of("net_device", &["nd_net"]).unwrap_or(0),
            sk_net: self
                .net_of("sock", &["__sk_common", "skc_net"])
                .unwrap_or(0),
            sk_rcvq_len: self.queue_len("sock", "sk_receive_queue").unwrap_or(0),
            udp_readq_len: self.queue_len("udp_sock", "reader_queue").unwrap_or(0),
        })
    }

    /// `sock.__sk_common.skc_ipv6only`'s bit, plus one.
    fn ipv6only_bit(&self) -> Option<u32> {
        let common = self.member_bits("sock", "__sk_common")?;
        Some(common + self.member_bits("sock_common", "skc_ipv6only")? + 1)
    }

    /// Where `member` of `struct name` is, in bits (a bitfield too).
    fn member_bits(&self, name: &str, member: &str) -> Option<u32> {
        self.btf
            .resolve_types_by_name(name)
            .ok()?
            .into_iter()
            .find_map(|t| match t {
                Type::Struct(s) => self.find_member(&s, member, 0, 0),
                _ => None,
            })
    }

    /// Where the `qlen` of the `struct sk_buff_head` `member` of `struct
    /// name` is.
    fn queue_len(&self, name: &str, member: &str) -> Result<u32> {
        Ok(self.offset(name, member)? + self.offset("sk_buff_head", "qlen")?)
    }

    /// Where the `struct net *` of a `possible_net_t` reached by `path`
    /// from `struct name` is; `None` when the kernel has no network
    /// namespaces (the type is then empty) or the path is not there.
    fn net_of(&self, name: &str, path: &[&str]) -> Option<u32> {
        let mut bits = 0;
        let mut t = self
            .btf
            .resolve_types_by_name(name)
            .ok()?
            .into_iter()
            .find(|t| matches!(t, Type::Struct(_)))?;
        for member in path.iter().chain(&["net"]) {
            let Type::Struct(s) = self.strip(t)? else {
                return None;
            };
            let (at, next) = self.find_member_type(&s, member, 0, 0)?;
            bits += at;
            t = next;
        }
        (bits % 8 == 0 && bits > 0).then_some(bits / 8)
    }

    fn offset(&self, name: &str, member: &str) -> Result<u32> {
        self.member_offset(name, member)
            .with_context(|| format!("struct {name}.{member} in kernel BTF"))
    }

    /// Byte offset of `member` in `struct name`, looking through anonymous
    /// structs and unions, which is where the kernel keeps many skb fields.
    pub fn member_offset(&self, name: &str, member: &str) -> Result<u32> {
        let types = self
            .btf
            .resolve_types_by_name(name)
            .map_err(|e| anyhow!("{e}"))?;
        for t in types {
            if let Type::Struct(s) = t
                && let Some(bits) = self.find_member(&s, member, 0, 0)
            {
                if bits % 8 != 0 {
                    bail!("{name}.{member} is a bitfield");
                }
                return Ok(bits / 8);
            }
        }
        Err(anyhow!("no member {member} in struct {name}"))
    }

    fn find_member(
        &self,
        s: &btf_rs::Struct,
        member: &str,
        base_bits: u32,
        depth: u32,
    ) -> Option<u32> {
        self.find_member_type(s, member, base_bits, depth)
            .map(|(bits, _)| bits)
    }

    /// Follows typedefs and qualifiers to the underlying type.
    fn strip(&self, mut t: Type) -> Option<Type> {
        for _ in 0..16 {
            let next = match &t {
                Type::Typedef(x) => self.btf.resolve_chained_type(x).ok()?,
                Type::Volatile(x) | Type::Const(x) | Type::Restrict(x) => {
                    self.btf.resolve_chained_type(x).ok()?
                }
                Type::TypeTag(x) => self.btf.resolve_chained_type(x).ok()?,
                _ => return Some(t),
            };
            t = next;
        }
        None
    }

    /// Value → name of a kernel enum (e.g. `skb_drop_reason`), with the
    /// common prefix of its names removed.
    pub fn enum_names(&self, name: &str, strip_prefix: &str) -> Result<BTreeMap<u64, String>> {
        let types = self
            .btf
            .resolve_types_by_name(name)
            .map_err(|e| anyhow!("{e}"))?;
        let mut out = BTreeMap::new();
        for t in types {
            match t {
                Type::Enum(e) => {
                    for m in &e.members {
                        let n = self.btf.resolve_name(m).unwrap_or_default();
                        out.insert(m.val() as u64, strip(&n, strip_prefix));
                    }
                }
                Type::Enum64(e) => {
                    for m in &e.members {
                        let n = self.btf.resolve_name(m).unwrap_or_default();
                        out.insert(m.val(), strip(&n, strip_prefix));
                    }
                }
                _ => continue,
            }
            if !out.is_empty() {
                return Ok(out);
            }
        }
        Err(anyhow!("no enum {name} in kernel BTF"))
    }

    /// How many arguments the function `name` takes: an fexit program finds
    /// the return value in the slot after them.
    pub fn func_args(&self, name: &str) -> Option<usize> {
        self.btf
            .resolve_types_by_name(name)
            .ok()?
            .iter()
            .find_map(|t| match t {
                Type::Func(f) => match self.btf.resolve_chained_type(f).ok()? {
                    Type::FuncProto(p) => Some(p.parameters.len()),
                    _ => None,
                },
                _ => None,
            })
    }

    /// Where a raw tracepoint's program finds a field (see
    /// [`RawSpec`]): the argument must exist in the tracepoint's prototype
    /// (`btf_trace_NAME`, after its `void *` context), each member of the
    /// path must be in the struct the value before it points to, and each
    /// but the last must itself be a pointer. `None` when any of that does
    /// not hold on this kernel: the probe is then attached classic.
    pub fn raw_field(&self, tracepoint: &str, spec: &RawSpec) -> Option<RawField> {
        let proto = self
            .btf
            .resolve_types_by_name(&format!("btf_trace_{tracepoint}"))
            .ok()?
            .into_iter()
            .find_map(|t| match self.strip(t)? {
                Type::Ptr(p) => match self.btf.resolve_chained_type(&p).ok()? {
                    Type::FuncProto(f) => Some(f),
                    _ => None,
                },
                _ => None,
            })?;
        let param = proto.parameters.get(spec.arg as usize + 1)?;
        let mut t = self.strip(self.btf.resolve_chained_type(param).ok()?)?;
        let mut field = RawField {
            hops: spec.path.len() as u16,
            ..RawField::default()
        };
        if spec.path.len() > RAW_HOPS {
            return None;
        }
        for (i, member) in spec.path.iter().enumerate() {
            let Type::Ptr(p) = t else { return None };
            let Type::Struct(st) = self.strip(self.btf.resolve_chained_type(&p).ok()?)? else {
                return None;
            };
            let (bits, mt) = self.find_member_type(&st, member, 0, 0)?;
            if bits % 8 != 0 {
                return None;
            }
            field.off[i] = u16::try_from(bits / 8).ok()?;
            t = self.strip(mt)?;
        }
        Some(field)
    }

    /// A member's bit offset and type, looking through anonymous structs
    /// and unions.
    fn find_member_type(
        &self,
        s: &btf_rs::Struct,
        member: &str,
        base_bits: u32,
        depth: u32,
    ) -> Option<(u32, Type)> {
        if depth > 8 {
            return None;
        }
        for m in &s.members {
            let name = self.btf.resolve_name(m).unwrap_or_default();
            let at = base_bits + m.bit_offset();
            if name == member {
                return Some((at, self.btf.resolve_chained_type(m).ok()?));
            }
            if name.is_empty() {
                let inner = self.strip(self.btf.resolve_chained_type(m).ok()?)?;
                if let Type::Struct(st) | Type::Union(st) = inner
                    && let Some(found) = self.find_member_type(&st, member, at, depth + 1)
                {
                    return Some(found);
                }
            }
        }
        None
    }

    /// Is `name` a function the BTF describes (an fentry target)?
    pub fn has_func(&self, name: &str) -> bool {
        self.btf
            .resolve_types_by_name(name)
            .map(|v| v.iter().any(|t| matches!(t, Type::Func(_))))
            .unwrap_or(false)
    }
}

fn strip(name: &str, prefix: &str) -> String {
    name.strip_prefix(prefix).unwrap_or(name).to_string()
}
