import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { startCustomAuth, type CustomAuthServer } from "../support/custom-auth.js";
import { startExample } from "../support/example.js";

/** examples/{express,fastify,hono}.ts, run as the docs say: started, asked, and stopped with SIGTERM. */

const TEAMMATE = "sk-example-teammate-0123456789";
const STRANGER = "sk-example-stranger-0123456789";

describe("the framework examples", () => {
  let auth: CustomAuthServer;

  before(async () => {
    auth = await startCustomAuth({
      users: {
        [TEAMMATE]: { principal: "erin", attributes: { teams: ["ml"] } },
        [STRANGER]: { principal: "frank", attributes: { teams: ["web"] } },
      },
    });
  });

  after(() => auth.close());

  for (const name of ["express", "fastify", "hono"]) {
    test(`examples/${name}.ts refuses a request without a key, serves one with a key, applies can(), and exits 0 on SIGTERM`, async () => {
      const example = await startExample(`${name}.ts`, auth.url);
      const url = example.url;
      try {
        const refused = await fetch(`${url}/v1/hello`);
        assert.equal(refused.status, 401);
        assert.equal(((await refused.json()) as { error: { code: string } }).error.code, "missing_credential");
        assert.equal((await fetch(`${url}/health`)).status, 200);
        const hello = await fetch(`${url}/v1/hello`, { headers: { authorization: `Bearer ${TEAMMATE}` } });
        assert.equal(hello.status, 200);
        assert.deepEqual(await hello.json(), { principal: "erin", attributes: { teams: ["ml"] } });
        // Llama Stack's default policy: a teammate of the owner may read, someone else gets a 404.
        assert.equal((await fetch(`${url}/v1/files/file-1`, { headers: { authorization: `Bearer ${TEAMMATE}` } })).status, 200);
        assert.equal((await fetch(`${url}/v1/files/file-1`, { headers: { authorization: `Bearer ${STRANGER}` } })).status, 404);
        assert.equal(await example.stop(), 0, example.stderr());
      } finally {
        example.kill();
      }
    });
  }
});
