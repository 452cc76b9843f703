// An OpenID provider for Firebreak's sign-in tests: oidc-provider (a
// certified implementation) with one confidential client, PKCE required,
// and two people in different groups:
//
//   alice  groups ["sre-oncall"]      bob  groups ["viewers"]
//   dana   groups ["platform-admins", "viewers"]
//
// Any other login is accepted by its development sign-in form and has no
// groups. tests/tests/oidc.rs starts it as
//
//   node provider.mjs '{"port": 4000, "client_id": "...", "client_secret": "...",
//                       "redirect_uri": "...", "post_logout_redirect_uri": "..."}'
//
// For the refusal cases the test asks it, over POST /__test/tamper with
// {"mode": ...}, to replace the next ID tokens its token endpoint returns:
//   forged         the same claims signed with a key the provider never published
//   unknown-kid    likewise, under a key id the provider's JWKS does not list
//   expired        signed with the real key, expired an hour ago
//   wrong-audience signed with the real key, for another client
//   wrong-nonce    signed with the real key, with another nonce
//   none           back to normal
// The signing key is made at start (RS256, a new key id each time).
import { exportJWK, generateKeyPair, SignJWT, decodeJwt } from "jose";
import Provider from "oidc-provider";

const input = JSON.parse(process.argv[2] || "{}");
const port = input.port;
const issuer = `http://127.0.0.1:${port}`;

const PEOPLE = {
  alice: { preferred_username: "alice", name: "Alice", email: "alice@example.test", email_verified: true, groups: ["sre-oncall"] },
  bob: { preferred_username: "bob", name: "Bob", email: "bob@example.test", email_verified: true, groups: ["viewers"] },
  dana: { preferred_username: "dana", name: "Dana", email: "dana@example.test", email_verified: true, groups: ["platform-admins", "viewers"] },
};

const signing = await generateKeyPair("RS256", { extractable: true });
// A new key id at every start: a restarted provider is a rotated key.
const kid = `k-${Date.now().toString(36)}`;
const jwk = { ...(await exportJWK(signing.privateKey)), kid, alg: "RS256", use: "sig" };
const stranger = await generateKeyPair("RS256");

let mode = "none";

const provider = new Provider(issuer, {
  clients: [
    {
      client_id: input.client_id,
      client_secret: input.client_secret,
      redirect_uris: [input.redirect_uri],
      post_logout_redirect_uris: [input.post_logout_redirect_uri],
      grant_types: ["authorization_code"],
      response_types: ["code"],
      token_endpoint_auth_method: "client_secret_basic",
    },
  ],
  claims: {
    openid: ["sub"],
    profile: ["preferred_username", "name"],
    email: ["email", "email_verified"],
    groups: ["groups"],
  },
  // Scope-requested claims in the ID token too (not only at userinfo).
  conformIdTokenClaims: false,
  pkce: { required: () => true },
  features: { devInteractions: { enabled: true }, rpInitiatedLogout: { enabled: true } },
  jwks: { keys: [jwk] },
  cookies: { keys: ["firebreak-test-only-cookie-key"] },
  async findAccount(ctx, sub) {
    const person = PEOPLE[sub] ?? { preferred_username: sub, email: `${sub}@example.test`, email_verified: false, groups: [] };
    return { accountId: sub, async claims() { return { sub, ...person }; } };
  },
});

// Replaces the ID token of a token response, as the mode says.
async function tamper(idToken) {
  const claims = decodeJwt(idToken);
  const now = Math.floor(Date.now() / 1000);
  let key = signing.privateKey;
  let kid = jwk.kid;
  if (mode === "forged") key = stranger.privateKey;
  if (mode === "unknown-kid") { key = stranger.privateKey; kid = "rotated"; }
  if (mode === "expired") { claims.iat = now - 3600; claims.exp = now - 3000; }
  if (mode === "wrong-audience") claims.aud = "some-other-client";
  if (mode === "wrong-nonce") claims.nonce = "not-the-nonce-firebreak-sent";
  return new SignJWT(claims).setProtectedHeader({ alg: "RS256", kid }).sign(key);
}

provider.use(async (ctx, next) => {
  if (ctx.path === "/__test/tamper" && ctx.method === "POST") {
    let raw = "";
    for await (const chunk of ctx.req) raw += chunk;
    mode = JSON.parse(raw).mode;
    ctx.body = { mode };
    return;
  }
  await next();
  if (ctx.path === "/token" && mode !== "none" && ctx.body && ctx.body.id_token) {
    ctx.body = { ...ctx.body, id_token: await tamper(ctx.body.id_token) };
  }
});
provider.on("server_error", (ctx, err) => console.error("server_error", err));
provider.listen(port, "127.0.0.1", () => console.log(`ready ${issuer}`));
