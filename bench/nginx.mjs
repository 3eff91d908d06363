// Scenarios 7 and 7w2: nginx as a plain reverse proxy (keep-alive to the
// upstream, no buffering, so streams pass event by event), with as many
// worker processes as the Node gateway it is compared with has processes
// serving requests (1, or 2 for the multi-core rows). Started as the invoking
// user with its own prefix, config and pid file under the benchmark's work
// directory (one prefix per instance, so that several can run at once).
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

/**
 * Starts nginx on `port` in front of `upstream` with `workers` worker
 * processes (`worker_processes`, default 1); returns the child process
 * (nginx's master, in the foreground; the workers are its children).
 */
export function startNginx(binary, { work, port, upstream, workers = 1 }) {
  const prefix = join(work, `nginx-${port}`);
  mkdirSync(join(prefix, "logs"), { recursive: true });
  const { host } = new URL(upstream);
  const conf = join(prefix, "nginx.conf");
  writeFileSync(
    conf,
    `
daemon off;
worker_processes ${workers};
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
