//! The host's failures as gRPC statuses, mapped as Triton maps them, with
//! the message HTTP sends and the instance in `x-instance-id` metadata.

use tonic::metadata::MetadataMap;
use tonic::{Code, Status};

use crate::core::error::{Error, Kind};

/// The code for each kind: what HTTP says with 400, 404, 503, 504, 507,
/// 500, 401 and 403.
pub fn code(kind: Kind) -> Code {
    match kind {
        Kind::BadInput => Code::InvalidArgument,
        Kind::NotFound => Code::NotFound,
        Kind::Unavailable => Code::Unavailable,
        Kind::DeadlineExceeded => Code::DeadlineExceeded,
        Kind::MemoryCap => Code::ResourceExhausted,
        Kind::ModelFailed | Kind::Trap => Code::Internal,
        Kind::Unauthenticated => Code::Unauthenticated,
        Kind::Forbidden => Code::PermissionDenied,
    }
}

pub fn status(err: Error) -> Status {
    let mut metadata = MetadataMap::new();
    if let Some(instance) = err.instance {
        metadata.insert("x-instance-id", instance.into());
    }
    Status::with_metadata(code(err.kind), err.message, metadata)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_maps_to_tritons_code_with_the_http_message() {
        let cases = [
            (Kind::BadInput, Code::InvalidArgument),
            (Kind::NotFound, Code::NotFound),
            (Kind::Unavailable, Code::Unavailable),
            (Kind::DeadlineExceeded, Code::DeadlineExceeded),
            (Kind::MemoryCap, Code::ResourceExhausted),
            (Kind::ModelFailed, Code::Internal),
            (Kind::Trap, Code::Internal),
            (Kind::Unauthenticated, Code::Unauthenticated),
            (Kind::Forbidden, Code::PermissionDenied),
        ];
        for (kind, want) in cases {
            let s = status(Error::new(kind, "why it failed").served_by(7));
            assert_eq!(s.code(), want, "{kind:?}");
            assert_eq!(s.message(), "why it failed");
            assert_eq!(s.metadata().get("x-instance-id").unwrap(), "7");
        }
    }

    /// A failed load's code, variant by variant: what HTTP says with 400,
    /// 400, 503, 404, 504 and 500.
    #[test]
    fn each_load_error_maps_to_its_code_with_its_message() {
        use crate::core::error::LoadError;
        let cases = [
            (LoadError::BadFile("m".into()), Code::InvalidArgument),
            (LoadError::Unsupported("m".into()), Code::InvalidArgument),
            (LoadError::OverBudget("m".into()), Code::Unavailable),
            (LoadError::NotFound("m".into()), Code::NotFound),
            (LoadError::Timeout("m".into()), Code::DeadlineExceeded),
            (LoadError::Internal("m".into()), Code::Internal),
        ];
        for (load, want) in cases {
            let shown = format!("{load:?}");
            let s = status(Error::from(load));
            assert_eq!(s.code(), want, "{shown}");
            assert_eq!(s.message(), "m");
        }
    }

    #[test]
    fn an_error_before_an_instance_has_no_instance_id() {
        let s = status(Error::not_found("unknown model \"nope\""));
        assert!(s.metadata().get("x-instance-id").is_none());
    }
}
