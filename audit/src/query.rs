//! The public query: a packet's source, destination and a time window (the types are
//! shared with the authority's archive, [`plab_authority::flows`]).

pub use plab_authority::flows::{Endpoint, Query, QueryError, MAX_WINDOW_MS};
