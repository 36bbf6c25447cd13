//! Which object store service a URL names, and what to tell its user.

/// Which service a URL names. Invariant: decided only by the URL's scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    S3,
    Gcs,
    Azure,
    Local,
}

impl Service {
    /// The service for a URL scheme, if it is an object store scheme.
    pub fn from_scheme(scheme: &str) -> Option<Service> {
        match scheme.to_ascii_lowercase().as_str() {
            "s3" | "s3a" => Some(Service::S3),
            "gs" => Some(Service::Gcs),
            "az" | "azure" | "abfs" | "abfss" | "adl" => Some(Service::Azure),
            "file" => Some(Service::Local),
            _ => None,
        }
    }

    /// A short name for messages.
    pub fn name(self) -> &'static str {
        match self {
            Service::S3 => "S3",
            Service::Gcs => "Google Cloud Storage",
            Service::Azure => "Azure Blob Storage",
            Service::Local => "the local filesystem",
        }
    }

    /// The environment variables (by prefix) this service is configured from.
    pub(super) fn env_prefix(self) -> &'static str {
        match self {
            Service::S3 => "AWS_",
            Service::Gcs => "GOOGLE_",
            Service::Azure => "AZURE_",
            Service::Local => "\0",
        }
    }

    /// Variables outside [`Service::env_prefix`] that the service's own client libraries read.
    pub(super) fn env_extra(self) -> &'static [&'static str] {
        match self {
            Service::Gcs => &["STORAGE_EMULATOR_HOST"],
            _ => &[],
        }
    }

    /// Where a user should look when credentials are refused.
    pub(super) fn credential_hint(self) -> &'static str {
        match self {
            Service::S3 => {
                "check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or the web identity token) and the bucket policy"
            }
            Service::Gcs => "check GOOGLE_APPLICATION_CREDENTIALS and the bucket's IAM bindings",
            Service::Azure => {
                "check AZURE_STORAGE_ACCOUNT_NAME and AZURE_STORAGE_ACCOUNT_KEY (or the SAS token)"
            }
            Service::Local => "check the file permissions",
        }
    }

    /// What to do when no credentials were configured and the cloud's metadata service, asked
    /// instead, did not give any.
    pub(super) fn no_credentials_hint(self) -> &'static str {
        match self {
            Service::S3 => {
                "no AWS credentials were found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_WEB_IDENTITY_TOKEN_FILE and AWS_ROLE_ARN), or run where an instance role is served"
            }
            Service::Gcs => {
                "no Google credentials were found: set GOOGLE_APPLICATION_CREDENTIALS, or run where a service account is served"
            }
            Service::Azure => {
                "no Azure credentials were found: set AZURE_STORAGE_ACCOUNT_KEY (or a SAS token), or run where a managed identity is served"
            }
            Service::Local => "check the file permissions",
        }
    }

    pub(super) fn endpoint_hint(self) -> &'static str {
        match self {
            Service::S3 => "check AWS_ENDPOINT_URL, AWS_REGION and the network path to the endpoint",
            Service::Gcs => {
                "check STORAGE_EMULATOR_HOST (for an emulator) and the network path to Google Cloud Storage"
            }
            Service::Azure => {
                "check the storage account endpoint (AZURITE_BLOB_STORAGE_URL for the emulator) and the network"
            }
            Service::Local => "check the path",
        }
    }
}

/// On the local filesystem, deleting objects leaves their folders: removes those under `prefix`
/// that are empty now (a folder that holds anything stays), so a deleted save leaves no number.
pub fn remove_empty_folders(service: Service, prefix: &object_store::path::Path) {
    fn remove(dir: &std::path::Path) {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    remove(&entry.path());
                }
            }
        }
        // Fails, as it should, when something is left in the folder.
        let _ = std::fs::remove_dir(dir);
    }
    if service == Service::Local {
        // The local store's keys are paths from the filesystem root.
        remove(&std::path::Path::new("/").join(prefix.as_ref()));
    }
}
