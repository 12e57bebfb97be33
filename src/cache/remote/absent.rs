//! A build without the `s3` feature: no remote cache can be opened, so
//! [`Remote`] has no values and its methods are never called.

use super::RemoteError;

#[derive(Debug)]
pub enum Remote {}

impl Remote {
    pub fn open(url: &str) -> Result<Remote, RemoteError> {
        Err(RemoteError::NotBuilt {
            url: url.to_string(),
        })
    }

    pub fn bucket(&self) -> &str {
        match *self {}
    }

    pub fn prefix(&self) -> &str {
        match *self {}
    }

    pub fn describe(&self, _rel: &str) -> String {
        match *self {}
    }

    pub fn get_verified(&self, _rel: &str) -> Result<Option<Vec<u8>>, String> {
        match *self {}
    }

    pub fn get(&self, _rel: &str) -> Option<Vec<u8>> {
        match *self {}
    }

    pub fn put_verified(&self, _rel: &str, _bytes: &[u8]) -> std::io::Result<()> {
        match *self {}
    }

    pub fn put(&self, _rel: &str, _bytes: &[u8]) -> std::io::Result<()> {
        match *self {}
    }

    pub fn list(&self, _rel: &str) -> std::io::Result<Vec<String>> {
        match *self {}
    }

    pub fn delete(&self, _rel: &str) {
        match *self {}
    }

    pub fn delete_folder(&self, _rel: &str) {
        match *self {}
    }
}
