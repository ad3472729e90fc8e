//! Entry points for the fuzz targets in `fuzz/` (feature `fuzzing`; never in the shipped
//! binary): what the token manager does with a token endpoint's answer body, without a
//! network.

use crate::entra::{aadsts_code, classify, EntraErrorBody, EntraTokenResponse};
use oauth2::TokenResponse;

/// Reads `body` as a successful token response and as an OAuth error body, as the token
/// manager does with every answer, and classifies the error; the results are discarded.
pub fn token_endpoint_answer(body: &[u8]) {
    if let Ok(response) = serde_json::from_slice::<EntraTokenResponse>(body) {
        let _ = response.expires_in();
        let _ = response.refresh_token().is_some();
        let _ = format!("{response:?}");
    }
    if let Ok(error) = serde_json::from_slice::<EntraErrorBody>(body) {
        let typed = error.to_error();
        let _ = classify(&typed);
        let _ = typed.to_string();
    }
    if let Ok(text) = std::str::from_utf8(body) {
        let _ = aadsts_code(text);
    }
}
