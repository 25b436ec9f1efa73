//! `RuntimeError`: what a sandbox backend reports, classified so that the API and the bridge
//! can answer with the right status whatever the backend.

/// Errors of a sandbox backend. The message says what the backend could not do and why, in
/// the backend's own words (for Docker: "Docker could not create the container: …").
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The backend could not be reached: no daemon, connection refused, a timeout.
    #[error("{message}")]
    Unreachable {
        /// The backend's name, as in [`super::SandboxBackend::name`].
        backend: &'static str,
        /// What could not be done, and why.
        message: String,
    },
    /// The backend answered an operation with an error.
    #[error("{message}")]
    Rejected {
        /// What was refused, and why.
        message: String,
    },
    /// What an operation works on does not exist.
    #[error("{message}")]
    NotFound {
        /// What is missing.
        message: String,
    },
    /// An image could not be pulled; `reason` is the registry's own words.
    #[error("image {image} could not be pulled: {reason}")]
    Pull {
        /// Image reference.
        image: String,
        /// The registry's reason.
        reason: String,
        /// Whether the image or repository does not exist (a client error).
        not_found: bool,
    },
    /// A host operation (a user account, a file) failed.
    #[error("could not {op}: {reason}")]
    Host {
        /// The operation.
        op: &'static str,
        /// What the command or the system said.
        reason: String,
    },
    /// A pool of the backend or of deployments (UIDs, networks) has nothing left.
    #[error("{message}")]
    Exhausted {
        /// The `reason` label of the failure metric (`uids_exhausted`, `subnets_exhausted`).
        reason: &'static str,
        /// What is exhausted.
        message: String,
        /// What an operator can do about it.
        advice: String,
    },
}

/// How a backend failure should be reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The backend could not be reached (503).
    Unreachable,
    /// The backend answered with an error (502).
    Rejected,
    /// The thing asked for does not exist.
    NotFound,
    /// A host command failed or a pool is exhausted.
    Host,
}

impl RuntimeError {
    /// Classifies the failure for the HTTP answer.
    pub fn kind(&self) -> FailureKind {
        match self {
            RuntimeError::Unreachable { .. } => FailureKind::Unreachable,
            RuntimeError::Rejected { .. } => FailureKind::Rejected,
            RuntimeError::NotFound { .. } => FailureKind::NotFound,
            RuntimeError::Pull {
                not_found: true, ..
            } => FailureKind::NotFound,
            RuntimeError::Pull { .. } => FailureKind::Rejected,
            RuntimeError::Host { .. } | RuntimeError::Exhausted { .. } => FailureKind::Host,
        }
    }

    /// Whether the error says the object is already gone.
    pub fn is_not_found(&self) -> bool {
        self.kind() == FailureKind::NotFound
    }

    /// The `reason` label of `mcp_runner_deployment_failures_total` for this error.
    pub fn reason(&self) -> &'static str {
        match self {
            RuntimeError::Pull {
                not_found: true, ..
            } => "image_not_found",
            RuntimeError::Pull { .. } => "image_pull",
            RuntimeError::Exhausted { reason, .. } => reason,
            RuntimeError::Host { .. } => "host_user",
            RuntimeError::Unreachable { .. } => "docker_unreachable",
            RuntimeError::Rejected { .. } | RuntimeError::NotFound { .. } => "docker_rejected",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_and_metric_reasons() {
        let pull = |not_found| RuntimeError::Pull {
            image: "x".into(),
            reason: "r".into(),
            not_found,
        };
        assert_eq!(pull(true).kind(), FailureKind::NotFound);
        assert_eq!(pull(true).reason(), "image_not_found");
        assert_eq!(pull(false).kind(), FailureKind::Rejected);
        assert_eq!(pull(false).reason(), "image_pull");
        let gone = RuntimeError::Unreachable {
            backend: "Docker",
            message: "m".into(),
        };
        assert_eq!(
            (gone.kind(), gone.reason()),
            (FailureKind::Unreachable, "docker_unreachable")
        );
        let full = RuntimeError::Exhausted {
            reason: "uids_exhausted",
            message: "the UID range 1-2 is exhausted".into(),
            advice: "widen UID_RANGE".into(),
        };
        assert_eq!(
            (full.kind(), full.reason()),
            (FailureKind::Host, "uids_exhausted")
        );
        assert_eq!(full.to_string(), "the UID range 1-2 is exhausted");
    }
}
