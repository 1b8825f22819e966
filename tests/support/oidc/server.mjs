// A real OpenID provider (panva/oidc-provider, an OpenID Certified implementation) for the
// gateway's OAuth2/OIDC integration tests, on 127.0.0.1 and a free port.
//
// What the tests use:
//   - client credentials grant at /token for the client `app` (secret `app-secret`), with the
//     resource indicators `urn:avx:opaque` (opaque tokens), `urn:avx:jwt-rs256` and
//     `urn:avx:jwt-es256` (JWT access tokens signed RS256 / ES256), all with the audience
//     `urn:avx:api` and the scopes `api:read api:write`; every token carries `tenant: "acme"`;
//   - RFC 7662 introspection at /token/introspection for `gateway-basic` (client_secret_basic)
//     and `gateway-post` (client_secret_post);
//   - RFC 7009 revocation at /token/revocation (a client revokes its own tokens);
//   - discovery at /.well-known/openid-configuration and the JWKS at /jwks;
//   - POST /_test/rotate: new signing keys (RS256 and ES256) sign from now on; the old ones stay
//     published unless `?keep=0`. Answers {"kids": [...]} (the published kids, signing first).
//
// Started by tests/support/oidc/__init__.py; it prints one JSON line {"issuer", "port", "pid"} on
// stdout once it listens (with its pid). PORT (default 0: any free port) is read from the environment.
import { createServer } from 'node:http';
import { generateKeyPairSync, randomUUID, webcrypto } from 'node:crypto';

// Node 18 has WebCrypto but not as a global; jose (under oidc-provider) expects the global.
if (!globalThis.crypto) globalThis.crypto = webcrypto;
const { default: Provider } = await import('oidc-provider');

const AUDIENCE = 'urn:avx:api';
const SCOPE = 'api:read api:write';
const RESOURCES = {
  'urn:avx:opaque': { accessTokenFormat: 'opaque' },
  'urn:avx:jwt-rs256': { accessTokenFormat: 'jwt', jwt: { sign: { alg: 'RS256' } } },
  'urn:avx:jwt-es256': { accessTokenFormat: 'jwt', jwt: { sign: { alg: 'ES256' } } },
};

function signingKeys() {
  const stamp = randomUUID().slice(0, 8);
  const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ format: 'jwk' });
  const ec = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ format: 'jwk' });
  return [
    { ...rsa, kid: `rs-${stamp}`, alg: 'RS256', use: 'sig' },
    { ...ec, kid: `es-${stamp}`, alg: 'ES256', use: 'sig' },
  ];
}

function makeProvider(issuer, keys) {
  const provider = new Provider(issuer, {
    clients: [
      {
        client_id: 'app',
        client_secret: 'app-secret',
        grant_types: ['client_credentials'],
        redirect_uris: [],
        response_types: [],
        scope: SCOPE,
      },
      {
        client_id: 'gateway-basic',
        client_secret: 'gateway-basic-secret',
        grant_types: [],
        redirect_uris: [],
        response_types: [],
        token_endpoint_auth_method: 'client_secret_basic',
      },
      {
        client_id: 'gateway-post',
        client_secret: 'gateway-post-secret',
        grant_types: [],
        redirect_uris: [],
        response_types: [],
        token_endpoint_auth_method: 'client_secret_post',
      },
    ],
    jwks: { keys },
    cookies: { keys: ['avx-test-cookie-key'] },
    scopes: ['openid', 'api:read', 'api:write'],
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      // Any authenticated client may introspect any token (the gateway's clients are not the
      // ones tokens are issued to); a client revokes only its own tokens.
      introspection: { enabled: true, allowedPolicy: (ctx, client) => client.clientAuthMethod !== 'none' },
      revocation: { enabled: true, allowedPolicy: (ctx, client, token) => token.clientId === client.clientId },
      resourceIndicators: {
        enabled: true,
        defaultResource: () => 'urn:avx:opaque',
        useGrantedResource: () => true,
        getResourceServerInfo: (ctx, indicator) => {
          const server = RESOURCES[indicator];
          if (!server) throw new Error(`unknown resource ${indicator}`);
          return { scope: SCOPE, audience: AUDIENCE, accessTokenTTL: 600, ...server };
        },
      },
    },
    extraTokenClaims: () => ({ tenant: 'acme' }),
    ttl: { ClientCredentials: 600 },
  });
  return provider;
}

const port = Number(process.env.PORT || 0);
let keys = signingKeys();
let issuer = null;
let provider = null;
let callback = null;

function install(newKeys) {
  keys = newKeys;
  provider = makeProvider(issuer, keys);
  callback = provider.callback();
}

const server = createServer((req, res) => {
  if (req.method === 'POST' && req.url.startsWith('/_test/rotate')) {
    const keep = new URL(req.url, issuer).searchParams.get('keep') !== '0';
    // The memory adapter's storage is shared by provider instances: tokens survive.
    install([...signingKeys(), ...(keep ? keys : [])]);
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ kids: keys.map((k) => k.kid) }));
    return;
  }
  callback(req, res);
});

server.listen(port, '127.0.0.1', () => {
  const actual = server.address().port;
  issuer = `http://127.0.0.1:${actual}`;
  install(keys);
  process.stdout.write(`${JSON.stringify({ issuer, port: actual, pid: process.pid })}\n`);
});

for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => process.exit(0));
}
