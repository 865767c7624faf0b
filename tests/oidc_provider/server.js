// A real OpenID provider (panva/oidc-provider, OpenID Certified) for Qustody's tests.
//
//   node server.js --port 0 [--issuer URL] [--config FILE]
//
// Prints one line `ready <issuer>` on stdout once it listens. The config file
// (JSON) may hold `clients` and `users`; both can also be changed while it runs
// through the test-only endpoints under /test/ (loopback only, no auth: this is
// a test fixture, never a real identity provider):
//
//   POST /test/clients   {client}            add or replace a client
//   POST /test/users     {user}              add or replace a user
//   POST /test/users/:id/disable, /enable    a disabled user cannot sign in
//   POST /test/rotate    {"retire": false}   publish a new signing key first
//                                            (retire: drop every other key)
//   POST /test/config    {"id_token_ttl": s} ID token lifetime in seconds
//   POST /test/tamper    {"claims": {...}, "header": {...}, "key": "current"|"stranger"}
//                        the next ID token the token endpoint returns is
//                        rewritten and signed again (a misbehaving provider)
//   GET  /test/state     the public keys and settings, for assertions
//
// Sign-in is headless: the authorization endpoint sends the browser to
// /interaction/:uid, where a GET answers JSON and a POST of
// {"login": id, "amr": "pwd otp", "acr": "..."} (form or JSON) finishes it.
// Consent is implied (every client is first-party here).

import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { createServer } from 'node:http';
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';

import * as jose from 'jose';
import Provider from 'oidc-provider';

const { values: args } = parseArgs({
  options: {
    port: { type: 'string', default: process.env.OIDC_PORT ?? '0' },
    issuer: { type: 'string', default: process.env.OIDC_ISSUER ?? '' },
    config: { type: 'string', default: process.env.OIDC_CONFIG ?? '' },
  },
});

const initial = args.config ? JSON.parse(readFileSync(args.config, 'utf8')) : {};
const ACR_VALUES = ['urn:qustody:test:pwd', 'urn:qustody:test:mfa'];

const state = {
  clients: new Map((initial.clients ?? []).map((c) => [c.client_id, c])),
  users: new Map((initial.users ?? []).map((u) => [u.id, { disabled: false, ...u }])),
  keys: [newKey()],
  idTokenTtl: 600,
  tamper: null,
};
const cookieKeys = [randomBytes(32).toString('base64url')];
let provider = null;
let issuer = args.issuer;

function newKey() {
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  const jwk = privateKey.export({ format: 'jwk' });
  return { ...jwk, kid: `k-${randomBytes(6).toString('hex')}`, use: 'sig', alg: 'RS256' };
}

function publicJwk(key) {
  const { d, p, q, dp, dq, qi, ...pub } = key;
  return pub;
}

function account(id) {
  const user = state.users.get(id);
  if (!user || user.disabled) return undefined;
  return {
    accountId: id,
    async claims() {
      const { disabled, id: _, ...claims } = user;
      return { sub: id, ...claims };
    },
  };
}

function build() {
  const configuration = {
    clients: [...state.clients.values()],
    jwks: { keys: state.keys },
    cookies: { keys: cookieKeys },
    acrValues: ACR_VALUES,
    claims: {
      acr: null,
      amr: null,
      auth_time: null,
      sid: null,
      openid: ['sub', 'acr', 'amr', 'auth_time'],
      email: ['email', 'email_verified'],
      profile: ['name', 'preferred_username'],
      groups: ['groups', 'org'],
    },
    scopes: ['openid', 'email', 'profile', 'groups'],
    conformIdTokenClaims: false,
    features: {
      devInteractions: { enabled: false },
      rpInitiatedLogout: { enabled: false },
    },
    pkce: { required: () => true },
    ttl: {
      IdToken: () => state.idTokenTtl,
      AccessToken: 300,
      AuthorizationCode: 60,
      Interaction: 600,
      Session: 600,
      Grant: 600,
    },
    findAccount: (ctx, sub) => account(sub),
    interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
    async loadExistingGrant(ctx) {
      // Every client is first-party: consent to whatever it asked for.
      const grantId = ctx.oidc.result?.consent?.grantId
        || ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
      const grant = grantId
        ? await ctx.oidc.provider.Grant.find(grantId)
        : new ctx.oidc.provider.Grant({
          clientId: ctx.oidc.client.clientId,
          accountId: ctx.oidc.session.accountId,
        });
      grant.addOIDCScope(ctx.oidc.params.scope ?? 'openid');
      grant.addOIDCClaims(['acr', 'amr']);
      await grant.save();
      return grant;
    },
    renderError(ctx, out) {
      ctx.type = 'json';
      ctx.body = out;
    },
  };
  const next = new Provider(issuer, configuration);
  next.use(tamperIdTokens);
  provider = next;
}

async function tamperIdTokens(ctx, next) {
  await next();
  const tamper = state.tamper;
  if (!tamper || ctx.path !== '/token' || !ctx.body || !ctx.body.id_token) return;
  state.tamper = null;
  const claims = { ...jose.decodeJwt(ctx.body.id_token), ...(tamper.claims ?? {}) };
  for (const [name, value] of Object.entries(claims)) if (value === null) delete claims[name];
  const key = tamper.key === 'stranger' ? { ...newKey(), kid: 'k-stranger' } : state.keys[0];
  const header = { alg: 'RS256', kid: key.kid, ...(tamper.header ?? {}) };
  const signingKey = await jose.importJWK(key, 'RS256');
  ctx.body = { ...ctx.body, id_token: await new jose.SignJWT(claims).setProtectedHeader(header).sign(signingKey) };
}

async function readBody(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  const text = Buffer.concat(chunks).toString('utf8');
  if (!text) return {};
  if ((req.headers['content-type'] ?? '').includes('application/json')) return JSON.parse(text);
  return Object.fromEntries(new URLSearchParams(text));
}

function json(res, status, body) {
  const data = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(data) });
  res.end(data);
}

async function testEndpoint(req, res, path) {
  const body = req.method === 'POST' ? await readBody(req) : {};
  if (req.method === 'GET' && path === '/test/state') {
    return json(res, 200, {
      keys: state.keys.map(publicJwk),
      id_token_ttl: state.idTokenTtl,
      users: [...state.users.values()],
    });
  }
  if (req.method !== 'POST') return json(res, 405, { error: 'method_not_allowed' });
  if (path === '/test/clients') {
    state.clients.set(body.client_id, body);
    build();
    return json(res, 200, { client_id: body.client_id });
  }
  if (path === '/test/users') {
    state.users.set(body.id, { disabled: false, ...body });
    return json(res, 200, state.users.get(body.id));
  }
  const user = path.match(/^\/test\/users\/([^/]+)\/(disable|enable)$/);
  if (user) {
    const found = state.users.get(decodeURIComponent(user[1]));
    if (!found) return json(res, 404, { error: 'no_such_user' });
    found.disabled = user[2] === 'disable';
    return json(res, 200, found);
  }
  if (path === '/test/rotate') {
    state.keys = body.retire ? [state.keys[0]] : [newKey(), ...state.keys];
    build();
    return json(res, 200, { keys: state.keys.map((k) => k.kid) });
  }
  if (path === '/test/config') {
    if (body.id_token_ttl !== undefined) state.idTokenTtl = Number(body.id_token_ttl);
    return json(res, 200, { id_token_ttl: state.idTokenTtl });
  }
  if (path === '/test/tamper') {
    state.tamper = body;
    return json(res, 200, { armed: true });
  }
  return json(res, 404, { error: 'not_found' });
}

async function interaction(req, res, uid, action) {
  // interactionDetails checks the interaction cookie: only the browser that
  // started the sign-in can finish it.
  const details = await provider.interactionDetails(req, res);
  if (details.uid !== uid) return json(res, 400, { error: 'wrong_interaction' });
  if (details.prompt.name === 'consent') {
    // Native clients are always asked for consent (RFC 8252 section 8.6); every
    // client is first-party here, so consent is given at once.
    const grant = details.grantId
      ? await provider.Grant.find(details.grantId)
      : new provider.Grant({ accountId: details.session.accountId, clientId: details.params.client_id });
    grant.addOIDCScope(details.params.scope ?? 'openid');
    grant.addOIDCClaims(['acr', 'amr']);
    const grantId = await grant.save();
    return provider.interactionFinished(req, res, { consent: { grantId } }, { mergeWithLastSubmission: true });
  }
  if (req.method === 'GET' && !action) {
    return json(res, 200, { uid, prompt: details.prompt, params: details.params });
  }
  if (req.method !== 'POST' || action !== 'login') return json(res, 405, { error: 'method_not_allowed' });
  const body = await readBody(req);
  const user = state.users.get(body.login);
  let result;
  if (!user || user.disabled) {
    result = { error: 'access_denied', error_description: 'the account is disabled or unknown' };
  } else {
    const amr = (Array.isArray(body.amr) ? body.amr : String(body.amr ?? 'pwd').split(' ')).filter(Boolean);
    const login = { accountId: user.id, amr, remember: false };
    if (body.acr) login.acr = body.acr;
    result = { login };
  }
  return provider.interactionFinished(req, res, result, { mergeWithLastSubmission: false });
}

const server = createServer(async (req, res) => {
  const path = new URL(req.url, 'http://x').pathname;
  try {
    if (path.startsWith('/test/')) return await testEndpoint(req, res, path);
    const match = path.match(/^\/interaction\/([^/]+)(?:\/([a-z]+))?$/);
    if (match) return await interaction(req, res, match[1], match[2]);
    return provider.callback()(req, res);
  } catch (error) {
    if (!res.headersSent) json(res, 500, { error: 'server_error', error_description: String(error) });
    return undefined;
  }
});

server.listen(Number(args.port), '127.0.0.1', () => {
  const { port } = server.address();
  issuer ||= `http://127.0.0.1:${port}`;
  build();
  process.stdout.write(`ready ${issuer}\n`);
});

for (const signal of ['SIGINT', 'SIGTERM']) process.on(signal, () => server.close(() => process.exit(0)));
