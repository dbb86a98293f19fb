//! The super-admin token: from `ZAPGATE_ADMIN_TOKEN`, or generated once and
//! kept in `<data_dir>/admin_token` (mode 0600). A generated token is
//! printed once to stderr, outside the log pipeline, so it never reaches
//! log storage.

use std::io::Write;
use std::path::Path;
use zapgate_domain::ApiToken;

pub const ADMIN_TOKEN_FILE: &str = "admin_token";

pub fn resolve(configured: Option<&str>, data_dir: &Path) -> std::io::Result<ApiToken> {
    if let Some(t) = configured {
        return Ok(ApiToken::presented(t));
    }
    let path = data_dir.join(ADMIN_TOKEN_FILE);
    match std::fs::read_to_string(&path) {
        Ok(t) if !t.trim().is_empty() => return Ok(ApiToken::presented(t.trim())),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    // In distributed mode nothing else makes the data directory.
    std::fs::create_dir_all(data_dir)?;
    let token = ApiToken::generate();
    let mut opts = std::fs::File::options();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(&path)?;
    f.write_all(token.reveal().as_bytes())?;
    f.sync_all()?;
    eprintln!(
        "\nzapgate: generated the super-admin token (shown once; also saved to {} with mode 0600):\n\n    {}\n",
        path.display(),
        token.reveal()
    );
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_token_is_kept_in_a_data_dir_made_for_it_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().join("not/made/yet");
        let first = resolve(None, &data_dir).unwrap();
        let again = resolve(None, &data_dir).unwrap();
        assert_eq!(first.reveal(), again.reveal());
        let configured = resolve(Some("a-configured-admin-token"), &data_dir).unwrap();
        assert_eq!(configured.reveal(), "a-configured-admin-token");
    }
}
