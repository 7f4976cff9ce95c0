//! rswarm's container runtime layer (see docs/rfcs/002-containers.md).

pub mod cgroup;
pub mod logs;
pub mod rootfs;
pub mod runc;
pub mod sealed;
pub mod shim;
pub mod spec;
pub mod user;
pub mod volumes;
