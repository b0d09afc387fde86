"""Verifies a JWT as a tool's backend would with PyJWT: the key by the token's kid from a
JWKS document, EdDSA only, the audience required. Prints the claims as JSON and exits 0, or
prints the PyJWT exception's name and exits 1.

usage: python3 -S pyjwt_verify.py JWKS_FILE TOKEN AUDIENCE
"""

import json
import sys

import jwt


def main():
    jwks_file, token, audience = sys.argv[1:4]
    with open(jwks_file) as f:
        keys = jwt.PyJWKSet.from_dict(json.load(f))
    try:
        kid = jwt.get_unverified_header(token)["kid"]
        key = keys[kid]
        claims = jwt.decode(token, key.key, algorithms=["EdDSA"], audience=audience)
    except (jwt.PyJWTError, KeyError) as e:
        print(type(e).__name__)
        return 1
    print(json.dumps(claims))
    return 0


if __name__ == "__main__":
    sys.exit(main())
