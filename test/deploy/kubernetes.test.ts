import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, posix } from "node:path";
import { describe, test, type TestContext } from "node:test";
import { parseAllDocuments, parse as parseYaml } from "yaml";
import { parseConfig } from "../../src/core/config/load.js";
import { READY_PATH } from "../../src/gateway/own-endpoints.js";
import { execForm, parseDockerfile } from "../support/dockerfile.js";
import { REPO, distFile } from "../support/gateway.js";

// deploy/kubernetes/ (kustomize) and deploy/helm/tollgate/ (Helm chart),
// without a cluster: both rendered by the real tools (`kubectl kustomize`,
// `helm template`; `helm lint --strict`), every object validated against the
// Kubernetes OpenAPI schemas (kubernetes-models; the ServiceMonitor against
// the Prometheus Operator's CRD schema), and the Deployment held to what the
// Dockerfile and the CLI really provide: image, port, probe paths, flags,
// mount paths, user. What is not checked here: that a cluster accepts the
// objects (admission, CRDs installed) or that the pods become ready.
// helm and kubectl come from scripts/install-k8s-tools.sh (called by .ci/run).

type K8sObject = {
  apiVersion: string;
  kind: string;
  metadata: { name: string; labels?: Record<string, string> };
  spec?: any;
  data?: Record<string, string>;
  stringData?: Record<string, string>;
};

const read = (path: string) => readFileSync(join(REPO, path), "utf8");

/** helm or kubectl: $TOLLGATE_K8S_TOOLS/bin, then scripts/install-k8s-tools.sh's folder, then PATH. */
function tool(name: "helm" | "kubectl"): string | undefined {
  const dirs = [process.env.TOLLGATE_K8S_TOOLS && join(process.env.TOLLGATE_K8S_TOOLS, "bin"), join(tmpdir(), "tollgate-k8s-tools", "bin")];
  for (const dir of dirs) if (dir && existsSync(join(dir, name))) return join(dir, name);
  return spawnSync(name, ["version", "--client"], { stdio: "ignore" }).status === 0 ? name : undefined;
}

/** The tool, or undefined after skipping `t` (under CI=true, where .ci/run installs it, a failure instead). */
function toolOrSkip(t: TestContext, name: "helm" | "kubectl"): string | undefined {
  const found = tool(name);
  if (found) return found;
  const reason = `${name} is not installed (bash scripts/install-k8s-tools.sh installs it)`;
  if (process.env.CI === "true") throw new Error(`${reason}; under CI=true this fails the run`);
  t.skip(reason);
  return undefined;
}

function run(command: string, args: readonly string[]): string {
  const r = spawnSync(command, args, { encoding: "utf8", timeout: 60_000 });
  assert.equal(r.status, 0, `${command} ${args.join(" ")}: ${r.stderr}`);
  return r.stdout;
}

function documents(text: string): K8sObject[] {
  return parseAllDocuments(text)
    .map((d) => d.toJS() as K8sObject | null)
    .filter((o): o is K8sObject => o !== null);
}

/** The kubernetes-models class for an object's apiVersion and kind. */
async function model(o: K8sObject): Promise<new (data: unknown) => { validate(): void }> {
  const module =
    o.apiVersion === "monitoring.coreos.com/v1"
      ? `@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/${o.kind}`
      : `kubernetes-models/${o.apiVersion}/${o.kind}`;
  return ((await import(module)) as Record<string, new (data: unknown) => { validate(): void }>)[o.kind]!;
}

async function validateAll(objects: readonly K8sObject[]): Promise<void> {
  for (const o of objects) {
    const Model = await model(o);
    assert.doesNotThrow(() => new Model(o).validate(), `${o.kind} ${o.metadata.name}`);
  }
}

const one = (objects: readonly K8sObject[], kind: string) => {
  const found = objects.filter((o) => o.kind === kind);
  assert.equal(found.length, 1, `one ${kind}`);
  return found[0]!;
};

const matches = (selector: Record<string, string>, labels: Record<string, string> | undefined) =>
  Object.entries(selector).every(([k, v]) => labels?.[k] === v);

// What the image and the CLI provide, read from them.
const dockerfile = parseDockerfile(read("Dockerfile"));
const runtime = dockerfile.at(-1)!.instructions;
const instruction = (name: string) => runtime.filter((i) => i.name === name).map((i) => i.args);
const serveHelp = (() => {
  const r = spawnSync(process.execPath, [distFile("cli/main.js"), "serve", "--help"], { encoding: "utf8" });
  assert.equal(r.status, 0, r.stderr);
  return r.stdout;
})();

/**
 * The checks both renders must pass: a gateway Deployment that runs what the
 * image and CLI provide, with its ConfigMap, Secret, Service, PDB, HPA and
 * ServiceMonitor pointing at each other.
 */
function checkSet(objects: readonly K8sObject[]): void {
  const deployment = one(objects, "Deployment");
  const pod = deployment.spec.template;
  const [container] = pod.spec.containers;
  assert.equal(pod.spec.containers.length, 1);

  // Flags: `tollgate serve` (the image's ENTRYPOINT is the CLI) with flags the CLI has.
  const entrypoint = execForm(instruction("ENTRYPOINT")[0]!)!;
  assert.deepEqual(entrypoint, ["node", "dist/cli/main.js"]);
  assert.equal(container.command, undefined, "the image's ENTRYPOINT is kept");
  const args = container.args as string[];
  assert.equal(args[0], "serve");
  for (const flag of args.filter((a) => a.startsWith("--"))) assert.match(serveHelp, new RegExp(`\\s${flag}\\b`), `tollgate serve has no ${flag}`);
  assert.equal(args[args.indexOf("--workers") + 1], "auto");
  assert.ok(args.includes("--watch-config"));

  // The config: the image's default path, in the mounted ConfigMap; a valid config once the Secret's variables are set.
  const configPath = args[args.indexOf("--config") + 1]!;
  const imageCmd = execForm(instruction("CMD")[0]!)!;
  assert.equal(configPath, imageCmd[imageCmd.indexOf("--config") + 1], "the config path the image uses");
  const mounts = container.volumeMounts as { name: string; mountPath: string; readOnly?: boolean }[];
  const configMount = mounts.find((m) => m.mountPath === posix.dirname(configPath))!;
  assert.ok(configMount, `a volume mounted at ${posix.dirname(configPath)}`);
  assert.equal(configMount.readOnly, true);
  const configVolume = pod.spec.volumes.find((v: { name: string }) => v.name === configMount.name);
  const configMap = objects.find((o) => o.kind === "ConfigMap" && o.metadata.name === configVolume.configMap.name)!;
  assert.ok(configMap, "the mounted ConfigMap is in the set");
  const secretName = container.envFrom[0].secretRef.name as string;
  const secret = objects.find((o) => o.kind === "Secret" && o.metadata.name === secretName);
  assert.ok(secret, `the Secret ${secretName} is in the set`);
  // Every ${env.NAME} without a default is in the Secret: parseConfig refuses an unset one.
  const env = Object.fromEntries(Object.keys(secret.stringData!).map((k) => [k, k.endsWith("_URL") ? secret.stringData![k]! : "x"]));
  const config = parseConfig(configMap.data![posix.basename(configPath)]!, "tollgate.yaml", env);

  // The port: the image's EXPOSE, the config's server.port, on every interface.
  assert.deepEqual(instruction("EXPOSE"), [String(container.ports[0].containerPort)]);
  assert.equal(config.server.port, container.ports[0].containerPort);
  assert.equal(config.server.host, "0.0.0.0", "probes and the Service reach the pod's address");
  assert.equal(container.ports[0].name, "http");

  // Probes: readiness on the gateway's /ready, liveness on /health as the image's HEALTHCHECK.
  assert.equal(container.readinessProbe.httpGet.path, READY_PATH);
  assert.equal(container.livenessProbe.httpGet.path, "/health");
  assert.match(instruction("HEALTHCHECK")[0]!, /127\.0\.0\.1:8321\/health/);
  for (const probe of [container.readinessProbe, container.livenessProbe]) assert.equal(probe.httpGet.port, "http");

  // Non-root as the image's user, read-only root: the image's one writable folder and /tmp are volumes.
  assert.deepEqual(instruction("USER"), ["node"]);
  assert.equal(pod.spec.securityContext.runAsUser, 1000, "the node image's `node` user");
  assert.equal(pod.spec.securityContext.runAsNonRoot, true);
  assert.equal(container.securityContext.readOnlyRootFilesystem, true);
  assert.equal(container.securityContext.allowPrivilegeEscalation, false);
  assert.deepEqual(container.securityContext.capabilities.drop, ["ALL"]);
  const volumes = execForm(instruction("VOLUME")[0] ?? "[]") ?? [];
  assert.deepEqual(volumes, ["/app/data"]);
  for (const path of [...volumes, "/tmp"]) assert.ok(mounts.some((m) => m.mountPath === path && !m.readOnly), `${path} is a writable volume`);
  assert.ok(container.resources.requests.cpu && container.resources.requests.memory && container.resources.limits.memory);
  assert.ok(pod.spec.terminationGracePeriodSeconds * 1000 > config.server.shutdown_timeout_ms, "the drain finishes before SIGKILL");

  // Who points at whom.
  const podLabels = pod.metadata.labels as Record<string, string>;
  assert.ok(matches(deployment.spec.selector.matchLabels, podLabels));
  const service = one(objects, "Service");
  assert.ok(matches(service.spec.selector, podLabels), "the Service selects the pods");
  assert.ok(service.spec.ports.some((p: { targetPort: string }) => p.targetPort === "http"));
  assert.ok(matches(one(objects, "PodDisruptionBudget").spec.selector.matchLabels, podLabels), "the PDB selects the pods");
  const hpa = one(objects, "HorizontalPodAutoscaler");
  assert.deepEqual(hpa.spec.scaleTargetRef, { apiVersion: "apps/v1", kind: "Deployment", name: deployment.metadata.name });
  assert.equal(hpa.spec.metrics[0].resource.name, "cpu");
  const monitor = one(objects, "ServiceMonitor");
  assert.ok(matches(monitor.spec.selector.matchLabels, service.metadata.labels), "the ServiceMonitor selects the Service");
  assert.ok(service.spec.ports.some((p: { name: string }) => p.name === monitor.spec.endpoints[0].port));
  assert.equal(monitor.spec.endpoints[0].path, config.metrics.path);
  assert.equal(config.metrics.enabled && config.metrics.port, undefined, "/metrics on the main port, which the ServiceMonitor scrapes");
}

describe("deploy/kubernetes (kustomize)", () => {
  const folder = join(REPO, "deploy/kubernetes");
  const kustomization = parseYaml(read("deploy/kubernetes/kustomization.yaml")) as { resources: string[]; images: { name: string }[] };

  test("kustomization.yaml lists every manifest of the folder", () => {
    const files = readdirSync(folder).filter((f) => f.endsWith(".yaml") && f !== "kustomization.yaml");
    assert.deepEqual([...kustomization.resources].sort(), files.sort());
  });

  test("each manifest is valid against the Kubernetes schemas", async () => {
    await validateAll(kustomization.resources.flatMap((f) => documents(readFileSync(join(folder, f), "utf8"))));
  });

  test("kubectl kustomize renders objects valid against the schemas, which run what the image and CLI provide", async (t) => {
    const kubectl = toolOrSkip(t, "kubectl");
    if (!kubectl) return;
    const objects = documents(run(kubectl, ["kustomize", folder]));
    await validateAll(objects);
    checkSet(objects);
    assert.equal(one(objects, "Deployment").spec.template.spec.containers[0].image, `tollgate:${JSON.parse(read("package.json")).version}`);
    assert.deepEqual(kustomization.images.map((i) => i.name), ["tollgate"]);
  });
});

describe("deploy/helm/tollgate", () => {
  const chart = join(REPO, "deploy/helm/tollgate");
  const template = (helm: string, ...args: string[]) => documents(run(helm, ["template", "tg", chart, ...args]));

  test("helm lint --strict passes", (t) => {
    const helm = toolOrSkip(t, "helm");
    if (!helm) return;
    run(helm, ["lint", "--strict", chart]);
  });

  test("helm template renders objects valid against the schemas, which run what the image and CLI provide", async (t) => {
    const helm = toolOrSkip(t, "helm");
    if (!helm) return;
    const objects = template(helm, "--set", "serviceMonitor.enabled=true");
    await validateAll(objects);
    checkSet(objects);
    const chartYaml = parseYaml(read("deploy/helm/tollgate/Chart.yaml")) as { appVersion: string };
    assert.equal(chartYaml.appVersion, JSON.parse(read("package.json")).version);
    assert.equal(one(objects, "Deployment").spec.template.spec.containers[0].image, `tollgate:${chartYaml.appVersion}`);
  });

  test("the chart's Deployment runs its container as the plain manifests do", (t) => {
    const [helm, kubectl] = [toolOrSkip(t, "helm"), toolOrSkip(t, "kubectl")];
    if (!helm || !kubectl) return;
    const container = (objects: K8sObject[]) => {
      const { image: _image, ...rest } = one(objects, "Deployment").spec.template.spec.containers[0];
      return rest;
    };
    const plain = documents(run(kubectl, ["kustomize", join(REPO, "deploy/kubernetes")]));
    const charted = template(helm);
    // The same container but for the names of the ConfigMap and Secret (release-prefixed in the chart).
    const named = (c: any) => ({ ...c, envFrom: c.envFrom.map(() => "secret") });
    assert.deepEqual(named(container(charted)), named(container(plain)));
    assert.deepEqual(one(charted, "Deployment").spec.template.spec.securityContext, one(plain, "Deployment").spec.template.spec.securityContext);
    // The same tollgate.yaml, parsed.
    const config = (objects: K8sObject[]) => parseYaml(one(objects, "ConfigMap").data!["tollgate.yaml"]!);
    assert.deepEqual(config(charted), config(plain));
  });

  test("values switch the optional objects and settings", (t) => {
    const helm = toolOrSkip(t, "helm");
    if (!helm) return;
    const kinds = (objects: K8sObject[]) => objects.map((o) => o.kind).sort();
    assert.deepEqual(kinds(template(helm)), ["ConfigMap", "Deployment", "HorizontalPodAutoscaler", "PodDisruptionBudget", "Secret", "Service"]);
    const lean = template(helm, "--set", "autoscaling.enabled=false,podDisruptionBudget.enabled=false,replicaCount=3,secret.create=false,secret.existingName=mine,watchConfig=false,workers=2");
    assert.deepEqual(kinds(lean), ["ConfigMap", "Deployment", "Service"]);
    const deployment = one(lean, "Deployment");
    assert.equal(deployment.spec.replicas, 3);
    const [container] = deployment.spec.template.spec.containers;
    assert.equal(container.envFrom[0].secretRef.name, "mine");
    assert.deepEqual(container.args, ["serve", "--config", "/app/config/tollgate.yaml", "--workers", "2"]);
    const refused = spawnSync(helm, ["template", "tg", chart, "--set", "secret.create=false"], { encoding: "utf8" });
    assert.notEqual(refused.status, 0);
    assert.match(refused.stderr, /secret\.existingName is required/);
  });
});
