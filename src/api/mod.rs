//! norman's conventions, held once: the schema registry (a type declared once serves discovery,
//! routing, filters and validation), request URLs and paths, resource and collection envelopes,
//! body validation and errors. Handlers under `http/` say only what their types do.

pub mod collection;
pub mod error;
pub mod input;
pub mod request;
pub mod resource;
pub mod schema;
pub mod urls;

pub use error::ApiError;
pub use resource::Resource;
pub use schema::{Field, Registry, Schema};
