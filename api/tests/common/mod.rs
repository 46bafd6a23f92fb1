//! Helpers shared by the socket tests: private temp dirs and a mock server.

#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ferry_api::client::ApiClient;
use ferry_api::mock::MockVmm;
use ferry_api::{serve_with, ApiServerHandle, ServerOptions};

/// A directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "ferry-api-{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        Self(dir)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Short timeouts so slow-client tests finish quickly.
pub fn test_options() -> ServerOptions {
    ServerOptions {
        max_connections: 8,
        header_timeout: Duration::from_millis(300),
        body_timeout: Duration::from_millis(300),
        ..ServerOptions::default()
    }
}

pub struct Mock {
    pub dir: TempDir,
    pub server: Option<ApiServerHandle>,
    pub client: ApiClient,
    pub socket: PathBuf,
}

impl Mock {
    pub fn start(tag: &str) -> Self {
        let dir = TempDir::new(tag);
        let socket = dir.path("api.sock");
        let server = serve_with(&socket, Arc::new(MockVmm::new()), test_options()).expect("serve");
        let client = ApiClient::new(&socket).with_timeout(Duration::from_secs(5));
        Self {
            dir,
            server: Some(server),
            client,
            socket,
        }
    }
}

impl Drop for Mock {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown();
        }
    }
}
