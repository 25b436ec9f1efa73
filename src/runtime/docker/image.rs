//! Images: used when present locally, otherwise pulled with progress logged. Creates that
//! need the same missing image at the same time share one pull.

use bollard::query_parameters::CreateImageOptionsBuilder;
use futures_util::StreamExt;

use crate::metrics::{METRICS, OutcomeLabels};

use super::{Client, DockerError, classify, docker_err};
use crate::domain::split_tag;
use crate::runtime::{FailureKind, RuntimeError};

impl Client {
    /// Whether `image` is present locally.
    async fn has_image(&self, image: &str) -> Result<bool, DockerError> {
        let _permit = self.permit("inspect the image").await;
        match self.docker.inspect_image(image).await {
            Ok(_) => Ok(true),
            Err(e) if classify(&e) == FailureKind::NotFound => Ok(false),
            // Not a reference Docker can parse (e.g. upper case): the image field is wrong.
            // A 301 is the same: an empty or dot path element (`name/`, `a//b`, `a/../b`)
            // that Docker's router redirects to a cleaned path instead of answering.
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: status @ (301 | 400),
                message,
            }) => {
                let reason = match status {
                    301 => format!("Docker does not take this reference ({status} {message})"),
                    _ => message,
                };
                Err(pull_error(image, reason, Some(400)))
            }
            Err(e) => Err(docker_err("inspect the image")(e)),
        }
    }

    /// Makes sure `image` is present locally, pulling it when it is not. Concurrent callers
    /// for one missing image wait for a single pull.
    pub async fn ensure_image(&self, image: &str) -> Result<(), DockerError> {
        if self.has_image(image).await? {
            return Ok(());
        }
        self.pulls
            .with(image, async {
                // Whoever held the lock before may have pulled it.
                if self.has_image(image).await? {
                    return Ok(());
                }
                self.counted_pull(image).await
            })
            .await
    }

    async fn counted_pull(&self, image: &str) -> Result<(), DockerError> {
        let pulled = self.pull(image).await;
        let outcome = if pulled.is_ok() { "ok" } else { "error" };
        METRICS
            .image_pulls
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
        pulled
    }

    async fn pull(&self, image: &str) -> Result<(), DockerError> {
        let _permit = self.permit("pull the image").await;
        tracing::info!(image, "pulling image");
        let (from_image, tag) = split_tag(image);
        let options = CreateImageOptionsBuilder::default()
            .from_image(from_image)
            .tag(tag)
            .build();
        let mut stream = self.docker.create_image(Some(options), None, None);
        let mut last_status = String::new();
        while let Some(item) = stream.next().await {
            match item {
                Ok(info) => {
                    if let Some(detail) = info.error_detail.and_then(|d| d.message) {
                        return Err(pull_error(image, detail, None));
                    }
                    if let Some(status) = info.status
                        && status != last_status
                    {
                        tracing::info!(
                            image,
                            layer = info.id.as_deref().unwrap_or(""),
                            "pull: {status}"
                        );
                        last_status = status;
                    }
                }
                Err(bollard::errors::Error::DockerResponseServerError {
                    status_code,
                    message,
                }) => return Err(pull_error(image, message, Some(status_code))),
                Err(bollard::errors::Error::DockerStreamError { error }) => {
                    return Err(pull_error(image, error, None));
                }
                Err(e) => return Err(docker_err("pull the image")(e)),
            }
        }
        tracing::info!(image, "image pulled");
        Ok(())
    }
}

/// A failed pull; `status` is the HTTP status of Docker's answer when it refused at once. A
/// 400 is a reference Docker cannot use (its grammar has more rules than the API checks, e.g.
/// "repository name must not be more than 255 characters"): the image field is wrong.
fn pull_error(image: &str, reason: String, status: Option<u16>) -> DockerError {
    let lower = reason.to_ascii_lowercase();
    let not_found = matches!(status, Some(400 | 404))
        || lower.contains("not found")
        || lower.contains("does not exist")
        || lower.contains("pull access denied")
        || lower.contains("invalid reference format");
    DockerError::Other(RuntimeError::Pull {
        image: image.to_owned(),
        reason,
        not_found,
    })
}

#[cfg(test)]
mod tests {
    use super::pull_error;
    use crate::runtime::FailureKind;

    #[test]
    fn a_reference_docker_refuses_is_the_clients_error() {
        let too_long = "repository name must not be more than 255 characters".to_owned();
        assert_eq!(
            pull_error("x", too_long, Some(400)).kind(),
            FailureKind::NotFound
        );
        assert_eq!(
            pull_error("x", "manifest unknown".into(), Some(404)).kind(),
            FailureKind::NotFound
        );
        // A registry that fails is not the client's fault.
        assert_eq!(
            pull_error(
                "x",
                "received unexpected HTTP status: 500".into(),
                Some(500)
            )
            .kind(),
            FailureKind::Rejected
        );
        assert_eq!(
            pull_error("x", "connection refused".into(), None).kind(),
            FailureKind::Rejected
        );
    }
}
