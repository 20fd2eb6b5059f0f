//! A stage's detail, decoded once from the event's stage-specific fields as
//! the catalog declares ([`DetailKind`]), so that the journey, the
//! statistics and every output read the same typed value instead of
//! re-reading overloaded fields.

use lotrace_common::{Event, Stage, catalog::DetailKind, event::is_flow};

/// A network device's name as the kernel stores it: NUL-padded bytes.
/// Kept as bytes, so decoding an event allocates nothing.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct DevName([u8; 16]);

impl DevName {
    /// The first 8 bytes, as the transmit probes carry them in `aux`.
    fn from_aux(aux: u64) -> DevName {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&aux.to_le_bytes());
        DevName(b)
    }

    /// All 16 bytes, as the route probe carries them in `skb` and `aux`.
    fn from_skb_aux(skb: u64, aux: u64) -> DevName {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&skb.to_le_bytes());
        b[8..].copy_from_slice(&aux.to_le_bytes());
        DevName(b)
    }

    pub fn as_bytes(&self) -> &[u8] {
        let end = self.0.iter().position(|&c| c == 0).unwrap_or(16);
        &self.0[..end]
    }
}

impl std::fmt::Display for DevName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&String::from_utf8_lossy(self.as_bytes()))
    }
}

impl std::fmt::Debug for DevName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.to_string())
    }
}

/// What one event of a stage says beyond its time and place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StageDetail {
    /// A route lookup in `table`: the next hop's device, or the kernel's
    /// error (negative, e.g. -101).
    Route {
        table: u32,
        next_hop: Result<DevName, i32>,
    },
    /// Dropped, with the kernel's `skb_drop_reason` code.
    Drop { reason: u64 },
    /// The NET_RX softirq ran this long.
    Ran { ns: u64 },
    /// The backlog poll took this many packets.
    Polled { packets: u64 },
    /// This task was woken.
    Woke { pid: u64 },
    /// A system call or copy moved this many bytes.
    Bytes(u32),
    /// A system call failed with this (negative) errno.
    Failed { errno: i64 },
    /// Transmitted on this device (when read) from a socket of this type
    /// (`SOCK_RAW`, `SOCK_DGRAM`; 0 when unseen).
    Transmit {
        dev: Option<DevName>,
        sock_type: u32,
    },
    /// Received inside a NET_RX run that began at this time.
    InRun { began_ns: u64 },
}

impl StageDetail {
    /// Decodes `ev`'s detail as its stage declares; `at_return` is its
    /// probe's.
    pub fn decode(ev: &Event, stage: Stage, at_return: bool) -> Option<StageDetail> {
        Some(match (stage.info().detail, at_return) {
            (DetailKind::Route, _) => StageDetail::Route {
                table: ev.aux2,
                next_hop: match ev.len as i32 {
                    0 => Ok(DevName::from_skb_aux(ev.skb, ev.aux)),
                    err => Err(err),
                },
            },
            (DetailKind::DropReason, _) => StageDetail::Drop { reason: ev.aux },
            (DetailKind::RunTime, true) => StageDetail::Ran { ns: ev.aux },
            (DetailKind::Polled, true) => StageDetail::Polled { packets: ev.aux },
            (DetailKind::Woken, _) => StageDetail::Woke { pid: ev.aux },
            (DetailKind::SyscallReturn, true) if (ev.aux as i64) < 0 => StageDetail::Failed {
                errno: ev.aux as i64,
            },
            (DetailKind::SyscallReturn, true) | (DetailKind::Bytes, _) => {
                StageDetail::Bytes(ev.len)
            }
            (DetailKind::RunStart, _) if ev.aux != 0 => StageDetail::InRun { began_ns: ev.aux },
            (DetailKind::Device, false) => StageDetail::Transmit {
                dev: (ev.aux != 0).then(|| DevName::from_aux(ev.aux)),
                // A TCP or UDP packet's transmit carries its payload there.
                sock_type: if is_flow(ev.icmp_type) { 0 } else { ev.aux2 },
            },
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(len: u32, skb: u64, aux: u64, aux2: u32) -> Event {
        Event {
            len,
            skb,
            aux,
            aux2,
            ..Default::default()
        }
    }

    #[test]
    fn device_names_come_from_the_fields_that_carry_them() {
        let lo = u64::from_le_bytes(*b"lo\0\0\0\0\0\0");
        let d = StageDetail::decode(&ev(84, 0, lo, 3), Stage::DevQueueXmit, false);
        let Some(StageDetail::Transmit {
            dev: Some(dev),
            sock_type: 3,
        }) = d
        else {
            panic!("{d:?}");
        };
        assert_eq!(dev.to_string(), "lo");
        let long = *b"veth-with-a-long";
        let skb = u64::from_le_bytes(long[..8].try_into().unwrap());
        let aux = u64::from_le_bytes(long[8..].try_into().unwrap());
        let d = StageDetail::decode(&ev(0, skb, aux, 255), Stage::Route, false);
        let Some(StageDetail::Route {
            table: 255,
            next_hop: Ok(dev),
        }) = d
        else {
            panic!("{d:?}");
        };
        assert_eq!(dev.to_string(), "veth-with-a-long");
    }

    #[test]
    fn returns_and_errors() {
        let failed = ev(0, 0, (-11i64) as u64, 0);
        assert_eq!(
            StageDetail::decode(&failed, Stage::Recvmsg, true),
            Some(StageDetail::Failed { errno: -11 })
        );
        assert_eq!(
            StageDetail::decode(&ev(64, 0, 64, 0), Stage::SockSendmsg, true),
            Some(StageDetail::Bytes(64))
        );
        // The start of a system call has no result yet.
        assert_eq!(StageDetail::decode(&failed, Stage::Recvmsg, false), None);
        let no_route = ev((-101i32) as u32, 0, 0, 254);
        assert_eq!(
            StageDetail::decode(&no_route, Stage::Route, false),
            Some(StageDetail::Route {
                table: 254,
                next_hop: Err(-101)
            })
        );
        assert_eq!(
            StageDetail::decode(&ev(0, 0, 0, 0), Stage::IpRcv, false),
            None
        );
    }
}
