//! norman's errors: `{"type":"error","baseType":"error","status":<n>,"code":…,"message":…}` with
//! `fieldName` when a field is at fault, the HTTP status equal to `status`; and the authentication
//! filter's own 401 (`shared/spec/norman-api.md` §4).

use std::borrow::Cow;

use axum::http::StatusCode;
use serde_json::{Map, Value};

/// The authentication filter's answer to a request without valid credentials: `status` is a
/// string there and there is no `code` (it never reaches norman).
pub const MUST_AUTHENTICATE: &str =
    r#"{"type":"error","status":"401","message":"must authenticate"}"#;

/// An error as norman writes it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status} {code}: {message}")]
pub struct ApiError {
    pub status: StatusCode,
    pub code: Cow<'static, str>,
    pub message: String,
    pub field_name: Option<String>,
    /// Seconds a refused client should wait before trying again (`Retry-After`, on 429 and 503).
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code: Cow::Borrowed(code),
            message: message.into(),
            field_name: None,
            retry_after: None,
        }
    }

    /// The same error, telling the client to wait `seconds`.
    pub fn retry_after(self, seconds: u64) -> Self {
        Self {
            retry_after: Some(seconds.max(1)),
            ..self
        }
    }

    /// The same error, about field `name`.
    pub fn on_field(self, name: &str) -> Self {
        Self {
            field_name: Some(name.to_string()),
            ..self
        }
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "NotFound", message)
    }

    /// `/v3/<unknown type>`.
    pub fn no_schema(name: &str) -> Self {
        Self::not_found(format!("failed to find schema {name}"))
    }

    /// A method norman does not take, or the type does not allow: `Method PATCH not supported`.
    pub fn method_not_allowed(method: &str) -> Self {
        Self::refused(format!("Method {method} not supported"))
    }

    /// 405 `MethodNotAllow` (sic) with a handler's own words (`cacerts is readOnly`).
    pub fn refused(message: impl Into<String>) -> Self {
        Self::new(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllow", message)
    }

    pub fn invalid_action(name: &str) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "InvalidAction",
            format!("Invalid action: {name}"),
        )
    }

    pub fn invalid_body(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "InvalidBodyContent",
            message,
        )
    }

    /// A 422 of `code` about `field`, with the empty message norman's field checks give.
    pub fn field(code: &'static str, field: &str) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, "").on_field(field)
    }

    pub fn missing_required(field: &str) -> Self {
        Self::field("MissingRequired", field)
    }

    pub fn permission_denied(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "PermissionDenied", message)
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "Conflict", message)
    }

    /// Creating what exists: Kubernetes' reason passes through as the code.
    pub fn already_exists(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "AlreadyExists", message)
    }

    pub fn server_error(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "ServerError", message)
    }

    /// The store cannot be reached: what a user can do about it, never the transport's error chain.
    pub fn store_unavailable() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            "the store (etcd) cannot be reached: nothing was changed; try again once it is back",
        )
        .retry_after(1)
    }

    /// The body norman writes.
    pub fn body(&self) -> Value {
        let mut out = Map::new();
        out.insert("type".into(), "error".into());
        out.insert("baseType".into(), "error".into());
        out.insert("status".into(), self.status.as_u16().into());
        out.insert("code".into(), self.code.as_ref().into());
        out.insert("message".into(), self.message.clone().into());
        if let Some(field) = &self.field_name {
            out.insert("fieldName".into(), field.clone().into());
        }
        Value::Object(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_carry_a_numeric_status_and_the_field_only_when_set() {
        let missing = ApiError::missing_required("name").body();
        assert_eq!(
            missing,
            serde_json::json!({"type":"error","baseType":"error","status":422,
                               "code":"MissingRequired","message":"","fieldName":"name"})
        );
        let refused = ApiError::method_not_allowed("PATCH").body();
        assert_eq!(refused["code"], "MethodNotAllow");
        assert!(refused.get("fieldName").is_none());
        let filter: Value = serde_json::from_str(MUST_AUTHENTICATE).unwrap();
        assert_eq!(filter["status"], "401");
        assert!(filter.get("code").is_none());
    }
}
