//! The control socket's identity requests: the agent inventory, the node's keys, certificate
//! signing, and live credentials and their revocation.

use tracing::warn;

use super::super::state::{State, StateError};
use crate::control::{Request, Response};

/// Answers one of this module's requests.
pub(super) fn handle(
    state: &mut State,
    who: &str,
    request: Request,
) -> Result<Response, StateError> {
    match request {
        Request::Agents {} => Ok(Response::Agents {
            trust_domain: state.trust_domain(),
            agents: state.agents(),
        }),
        Request::Keys {} => Ok(keys(state)),
        Request::KeysRotate {} => {
            let kid = state.rotate_keys()?;
            warn!(kid, by = who, "signing key rotated");
            Ok(keys(state))
        }
        Request::CertSign { certificate } => state
            .sign_certificate(&certificate)
            .map(|signature| Response::CertSigned { signature }),
        Request::Credentials {} => Ok(Response::Credentials {
            credentials: state.live_credentials(),
        }),
        Request::Revoke { jti, agent } => state
            .revoke_credentials(jti.as_deref(), agent.as_deref(), who)
            .map(|credentials| Response::Credentials { credentials }),
        _ => Err(StateError::Usage("not an identity request".into())),
    }
}

fn keys(state: &State) -> Response {
    let (current, keys) = state.keys();
    Response::Keys {
        current,
        keys,
        jwks: serde_json::to_value(state.jwks()).unwrap_or_default(),
    }
}
