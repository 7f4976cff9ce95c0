//! rswarm's wire API, generated from the `.proto` files in `proto/`.
//!
//! One module per versioned protobuf package (`rswarm.<area>.v1`). Generated code only: conversions
//! between these messages and the store's objects live with the services that use them.

#![allow(clippy::all, clippy::pedantic)]
#![allow(missing_docs)]

pub mod ca {
    pub mod v1 {
        tonic::include_proto!("rswarm.ca.v1");
    }
}

pub mod control {
    pub mod v1 {
        tonic::include_proto!("rswarm.control.v1");
    }
}

pub mod dispatcher {
    pub mod v1 {
        tonic::include_proto!("rswarm.dispatcher.v1");
    }
}

pub mod local {
    pub mod v1 {
        tonic::include_proto!("rswarm.local.v1");
    }
}

pub mod raft {
    pub mod v1 {
        tonic::include_proto!("rswarm.raft.v1");
    }
}

pub mod types {
    pub mod v1 {
        tonic::include_proto!("rswarm.types.v1");
    }
}
