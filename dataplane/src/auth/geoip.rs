//! Country lookup in a MaxMind-format database (`GEOIP_DB_PATH`), for
//! country restrictions. The file is read once at startup.

use std::{net::IpAddr, path::Path, sync::Arc};

use maxminddb::{geoip2, Reader};

#[derive(Clone)]
pub struct GeoIp(Arc<Reader<Vec<u8>>>);

impl GeoIp {
    pub fn open(path: &Path) -> Result<Self, maxminddb::MaxMindDbError> {
        Ok(GeoIp(Arc::new(Reader::open_readfile(path)?)))
    }

    /// The ISO 3166 alpha-2 country of `ip`, if the database knows it.
    pub fn country(&self, ip: IpAddr) -> Option<String> {
        match self.0.lookup::<geoip2::Country>(ip) {
            Ok(found) => found
                .and_then(|c| c.country)
                .and_then(|c| c.iso_code)
                .map(str::to_ascii_uppercase),
            Err(e) => {
                tracing::debug!(error = %e, "geoip lookup failed");
                None
            }
        }
    }
}
