//! A segment as a process of a cluster: the [`segment`] process itself and
//! its [`storage`] API, the authenticated [`control`] channel, the local
//! [`client`] socket, the arbiter process ([`probe`]), [`metrics`], and the
//! mirror [`layout`] the cluster tools place mirrors with, checked against
//! the [`hosts`] themselves.

pub mod client;
pub mod control;
pub mod coordinator;
pub mod hosts;
pub mod layout;
pub mod metrics;
pub mod probe;
pub mod segment;
pub mod storage;
