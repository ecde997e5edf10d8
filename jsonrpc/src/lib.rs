//! JSON-RPC 2.0 as plab's services speak it, in one place: the envelope with batches and
//! notifications ([`server`]), one table of error codes ([`ErrorCode`]), typed params
//! given by name or by position ([`params`]), and a client generic over its transport
//! ([`client`]).
//!
//! The node manager's local API (one message per line on a Unix socket), the
//! authorities' API (HTTPS bodies) and the management authority's trigger to a node's boot
//! manager all use it. Each API lists its methods once with [`api!`], which ties every
//! method to its params and result types: the server, its client and the `plab` CLI share
//! those types, so a change on one side that the other does not follow fails to compile.
#![warn(missing_docs)]

pub mod client;
pub mod error;
pub mod params;
pub mod server;

pub use client::{AsyncClient, AsyncTransport, Call, Client, ClientError, LineTransport, Transport};
pub use error::{ErrorCode, RpcError};
pub use params::{Empty, NoParams, Params};
pub use serde_json::Value;

/// Serialises a typed result of call `C` for the wire.
pub fn reply<C: Call>(r: Result<C::Result, RpcError>) -> Result<Value, RpcError> {
    r.and_then(|v| serde_json::to_value(v).map_err(|e| RpcError::internal(format!("{}: result: {e}", C::METHOD))))
}

/// Lists an API's methods once: each with its params type and result type.
///
/// ```text
/// jsonrpc::api! {
///     /// Every method of the API.
///     pub api Method, Request, calls {
///         /// `GetRSpec(rcap) -> {rspec}`.
///         GetRSpec(RcapParams) -> RSpecResult;
///     }
/// }
/// ```
///
/// makes `enum Method` (wire names, parameter names), `enum Request` (a method with its
/// decoded params: `Request::decode(method, params)`) and, in module `calls`, one marker
/// type per method implementing [`Call`], for typed clients.
#[macro_export]
macro_rules! api {
    (
        $(#[$meta:meta])*
        pub api $Method:ident, $Request:ident, $calls:ident {
            $( $(#[$doc:meta])* $name:ident ( $params:ty ) -> $result:ty ; )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $Method { $( $(#[$doc])* $name, )* }

        impl $Method {
            /// Every method.
            pub const ALL: &'static [$Method] = &[$( $Method::$name, )*];
            /// The method's wire name.
            pub fn name(self) -> &'static str { match self { $( $Method::$name => stringify!($name), )* } }
            /// Looks a method up by wire name.
            pub fn parse(s: &str) -> Option<$Method> { match s { $( stringify!($name) => Some($Method::$name), )* _ => None } }
            /// Its parameter names, in positional order.
            pub fn params(self) -> &'static [&'static str] {
                match self { $( $Method::$name => <$params as $crate::Params>::NAMES, )* }
            }
        }

        impl ::std::fmt::Display for $Method {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result { f.write_str(self.name()) }
        }

        /// A request: a method with its decoded params.
        #[derive(Debug, Clone)]
        pub enum $Request { $( $(#[$doc])* $name($params), )* }

        impl $Request {
            /// Decodes `params` (by name or by position) for `method`.
            pub fn decode(method: &str, params: $crate::Value) -> ::std::result::Result<$Request, $crate::RpcError> {
                match $Method::parse(method) {
                    $( Some($Method::$name) => Ok($Request::$name($crate::params::decode(method, params)?)), )*
                    None => Err($crate::RpcError::new($crate::ErrorCode::METHOD_NOT_FOUND, format!("method: no method {method:?}"))),
                }
            }
            /// The method.
            pub fn method(&self) -> $Method { match self { $( $Request::$name(_) => $Method::$name, )* } }
        }

        /// One marker type per method, implementing [`Call`]($crate::Call) for typed clients.
        pub mod $calls {
            #[allow(unused_imports)]
            use super::*;
            $(
                $(#[$doc])*
                #[derive(Debug, Clone, Copy)]
                pub struct $name;
                impl $crate::Call for $name {
                    const METHOD: &'static str = stringify!($name);
                    type Params = $params;
                    type Result = $result;
                }
            )*
        }
    };
}

/// Declares a params struct: serde with unknown fields refused, and [`Params::NAMES`] in
/// the order the fields are written (the positional order). The calling crate depends on
/// `serde` (with `derive`).
///
/// ```text
/// jsonrpc::params! {
///     /// `GetRSpec(rcap)`.
///     pub struct RcapParams { pub rcap: String }
/// }
/// ```
#[macro_export]
macro_rules! params {
    ($( $(#[$m:meta])* pub struct $Name:ident { $( $(#[$fm:meta])* pub $field:ident : $ty:ty ),* $(,)? } )*) => {
        $(
            $(#[$m])*
            #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
            #[serde(deny_unknown_fields)]
            pub struct $Name { $( $(#[$fm])* pub $field: $ty, )* }
            impl $crate::Params for $Name {
                const NAMES: &'static [&'static str] = &[$( stringify!($field), )*];
            }
        )*
    };
}
