//! `P/session/<row id>/download`: the session as the .ipynb `replay` writes, with the
//! proof an auditor verifies offline (`verify-export`; from PostgreSQL, the forwarded
//! records and checkpoints make the same proof), outputs only for reviewers who
//! hold `custom:jupyter-audit:read-outputs`. The download is on the record before its
//! bytes leave.

use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::{query_failed, record_view};
use crate::console::ConsoleSource;
use crate::console::export::{self, ExportError};
use crate::console::server::{Console, SignedIn, error_page};
use crate::console::trail::Viewed;
use crate::review::ReviewError;

/// `P/session/<id>/download`.
pub async fn download(
    State(console): State<Console>,
    signed: SignedIn,
    Path(id): Path<i64>,
) -> Response {
    let row = match console.index.query(move |index| index.session(id)).await {
        Ok(Some(row)) if signed.may_see(&row) => row,
        Ok(_) => return error_page(StatusCode::NOT_FOUND, "No such session."),
        Err(error) => return query_failed(error),
    };
    let outputs = signed.may_see_outputs(&row);
    let session_id = row.session_id.clone();
    let source = console.source.clone();
    let exported = tokio::task::spawn_blocking(move || match source.as_ref() {
        ConsoleSource::Store(store) => export::export_row(store, &row, outputs),
        ConsoleSource::Postgres(options) => export::export_forwarded(options, &row, outputs),
    })
    .await;
    let export = match exported {
        Ok(Ok(export)) => export,
        Ok(Err(error)) => return export_failed(&error),
        Err(error) => {
            tracing::warn!(%error, "the export task failed");
            return error_page(StatusCode::INTERNAL_SERVER_ERROR, "The export failed.");
        }
    };
    if let Err(response) = record_view(
        &console,
        &signed,
        Viewed::Download {
            session_id,
            outputs,
        },
    )
    .await
    {
        return response;
    }
    let disposition = format!(
        "attachment; filename=\"{}\"",
        safe_file_name(&export.file_name)
    );
    (
        [
            (header::CONTENT_TYPE, export.content_type.to_owned()),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        export.bytes,
    )
        .into_response()
}

fn export_failed(error: &ExportError) -> Response {
    match error {
        ExportError::Review(ReviewError::NoSession(_)) => {
            error_page(StatusCode::NOT_FOUND, "No such session in the store.")
        }
        ExportError::NotCovered { .. } => {
            error_page(StatusCode::SERVICE_UNAVAILABLE, &error.to_string())
        }
        _ => {
            tracing::warn!(%error, "a session could not be exported");
            error_page(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("The session could not be exported: {error}"),
            )
        }
    }
}

/// The file name as a header can carry it: letters, digits, `.`, `-`, `_` only.
fn safe_file_name(name: &str) -> String {
    let safe: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if safe.is_empty() {
        "session.ipynb".to_owned()
    } else {
        safe
    }
}

#[cfg(test)]
mod tests {
    use super::safe_file_name;

    #[test]
    fn a_file_name_cannot_break_out_of_its_header() {
        assert_eq!(
            safe_file_name("a\"; x=\r\n.ipynb"),
            "a___x___.ipynb".to_owned()
        );
        assert_eq!(safe_file_name("alice-1.ipynb"), "alice-1.ipynb");
        assert_eq!(safe_file_name(""), "session.ipynb");
    }
}
