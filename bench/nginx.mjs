// Scenario 7: nginx as a plain reverse proxy (keep-alive to the upstream,
// no buffering, so streams pass event by event), one worker like the one
// Node process of the other gateways. Started as the invoking user with its
// own prefix, config and pid file under the benchmark's work directory.
import { spawn, spawnSync } from "node:child_process";
import { existsSync, mkdirSync, writeFileSync } from "node:fs";
import { delimiter, join } from "node:path";

const SBIN = ["/usr/sbin", "/usr/local/sbin", "/usr/local/nginx/sbin", "/opt/homebrew/bin"];

/** The nginx binary: on PATH or in the usual sbin directories; undefined when not installed. */
export function findNginx() {
  const dirs = [...(process.env.PATH ?? "").split(delimiter), ...SBIN];
  return dirs.filter(Boolean).map((d) => join(d, "nginx")).find((p) => existsSync(p));
}

/** Runs scripts/install-bench-tools.sh (BENCH_INSTALL_NGINX=1); returns nginx's path afterwards, if any. */
export function installNginx(root) {
  console.error("bench: BENCH_INSTALL_NGINX=1: running scripts/install-bench-tools.sh");
  spawnSync("bash", [join(root, "scripts/install-bench-tools.sh")], { stdio: ["ignore", "inherit", "inherit"] });
  return findNginx();
}

/** Starts nginx on `port` in front of `upstream`; returns the child process (nginx's master, in the foreground). */
export function startNginx(binary, { work, port, upstream }) {
  const prefix = join(work, "nginx");
  mkdirSync(join(prefix, "logs"), { recursive: true });
  const { host } = new URL(upstream);
  const conf = join(prefix, "nginx.conf");
  writeFileSync(
    conf,
    `
daemon off;
worker_processes 1;
${process.getuid?.() === 0 ? "user root;" : ""}
pid ${prefix}/nginx.pid;
error_log ${prefix}/logs/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path ${prefix}/client_body;
  proxy_temp_path ${prefix}/proxy;
  fastcgi_temp_path ${prefix}/fastcgi;
  uwsgi_temp_path ${prefix}/uwsgi;
  scgi_temp_path ${prefix}/scgi;
  upstream backend { server ${host}; keepalive 64; }
  server {
    listen 127.0.0.1:${port};
    keepalive_requests 1000000;
    location / {
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
      proxy_request_buffering off;
    }
  }
}
`,
  );
  return spawn(binary, ["-p", prefix, "-c", conf], { stdio: ["ignore", "ignore", "inherit"] });
}
