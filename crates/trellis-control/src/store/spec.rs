//! Choosing a store from the control plane's flags: `--data-dir DIR` (the embedded store, the
//! default) or `--store etcd://host:port,host:port` (etcd, several endpoints of one cluster).
use super::{EmbeddedOptions, EmbeddedStore, EtcdOptions, EtcdStore, Result, Store, StoreError};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The embedded store's file inside `--data-dir`.
pub const DATA_FILE: &str = "trellis.redb";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreSpec {
    /// `DATA_DIR/trellis.redb`.
    Embedded { data_dir: PathBuf },
    /// Client URLs (`http://host:port`) of one etcd cluster.
    Etcd { endpoints: Vec<String> },
}

impl StoreSpec {
    /// `store` is the `--store` flag: absent or `embedded` for the file store under `data_dir`,
    /// `etcd://host:port[,host:port...]` for etcd.
    pub fn from_flags(store: Option<&str>, data_dir: &Path) -> Result<Self> {
        match store.map(str::trim) {
            None | Some("") | Some("embedded") => Ok(StoreSpec::Embedded {
                data_dir: data_dir.to_path_buf(),
            }),
            Some(url) => Ok(StoreSpec::Etcd {
                endpoints: parse_etcd_url(url)?,
            }),
        }
    }
}

/// `etcd://h1:2379,h2:2379` to `["http://h1:2379", "http://h2:2379"]`. Each endpoint may repeat
/// the `etcd://` prefix; IPv6 hosts go in brackets (`[::1]:2379`).
fn parse_etcd_url(url: &str) -> Result<Vec<String>> {
    let bad = |detail: String| StoreError::Config {
        setting: url.to_string(),
        detail,
    };
    let Some(rest) = url.strip_prefix("etcd://") else {
        return Err(bad(
            "expected `embedded` or etcd://host:port[,host:port...] (TLS is not supported yet)"
                .into(),
        ));
    };
    let mut endpoints = Vec::new();
    for item in rest.split(',') {
        let item = item.trim();
        let item = item.strip_prefix("etcd://").unwrap_or(item);
        let item = item.strip_suffix('/').unwrap_or(item);
        let Some((host, port)) = item.rsplit_once(':') else {
            return Err(bad(format!("endpoint {item:?} needs host:port")));
        };
        let port_ok = port.parse::<u16>().is_ok_and(|p| p > 0);
        let host_ok = !host.is_empty()
            && !host.contains(['/', '@', '?', '#', ' '])
            && (!host.contains(':') || (host.starts_with('[') && host.ends_with(']')));
        if !port_ok || !host_ok {
            return Err(bad(format!(
                "endpoint {item:?} is not host:port (IPv6 as [addr]:port)"
            )));
        }
        endpoints.push(format!("http://{host}:{port}"));
    }
    Ok(endpoints)
}

/// Opens the store `spec` names: the embedded file (created if missing) or a connection to etcd
/// (checked with one request, so a wrong address fails here, clearly, and not on first use).
pub async fn open(spec: &StoreSpec) -> Result<Arc<dyn Store>> {
    Ok(match spec {
        StoreSpec::Embedded { data_dir } => {
            Arc::new(EmbeddedStore::open(data_dir, EmbeddedOptions::default()).await?)
        }
        StoreSpec::Etcd { endpoints } => {
            Arc::new(EtcdStore::connect(EtcdOptions::new(endpoints.clone())).await?)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags() {
        let dir = Path::new("/var/lib/trellis");
        assert_eq!(
            StoreSpec::from_flags(None, dir).expect("default"),
            StoreSpec::Embedded {
                data_dir: dir.into()
            }
        );
        assert_eq!(
            StoreSpec::from_flags(Some("etcd://10.0.0.1:2379,etcd://[::1]:2381,h:1/"), dir)
                .expect("etcd"),
            StoreSpec::Etcd {
                endpoints: vec![
                    "http://10.0.0.1:2379".into(),
                    "http://[::1]:2381".into(),
                    "http://h:1".into()
                ]
            }
        );
        for bad in [
            "redis://x:1",
            "etcd://",
            "etcd://host",
            "etcd://host:0",
            "etcd://host:99999",
            "etcd://a:1,,b:2",
            "etcd://::1:2379",
            "etcd://u@h:1",
        ] {
            let err = StoreSpec::from_flags(Some(bad), dir).expect_err(bad);
            assert!(err.to_string().contains(bad), "{err}");
        }
    }
}
