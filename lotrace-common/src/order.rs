//! The orders in which an echo meets its stages: what the tests and the
//! kernel matrix check a journey against, written once for both.

use crate::Stage;

/// The design card's stages, in the order a request meets them.
pub const CARD: &[Stage] = &[
    Stage::SockSendmsg,
    Stage::DevQueueXmit,
    Stage::LoopbackXmit,
    Stage::NetifRx,
    Stage::NetRxAction,
];

/// Stages every echo request over loopback crosses, in this order, with
/// any backend.
pub const REQUEST: &[Stage] = &[
    Stage::Sendto,
    Stage::Route,
    Stage::DevQueueXmit,
    Stage::LoopbackXmit,
    Stage::NetifRx,
    Stage::NetifReceiveSkb,
];

/// Stages every echo reply over loopback crosses, in this order. The reply
/// is built inside the request's NET_RX softirq: it has no sendto, and the
/// softirq run that is already going receives it.
pub const REPLY: &[Stage] = &[
    Stage::Route,
    Stage::DevQueueXmit,
    Stage::LoopbackXmit,
    Stage::NetifRx,
    Stage::NetifReceiveSkb,
    Stage::SockDeliver,
    Stage::CopyToUser,
    Stage::Recvmsg,
];
