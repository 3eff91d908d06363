#!/usr/bin/env node
// Copies the web console (src/console: one HTML page, one script, one
// stylesheet, no third-party code) into dist/console, where `tollgate serve`
// serves it at /console/. Nothing is fetched: the console works offline.
import { cpSync, mkdirSync, rmSync } from "node:fs";
import { fileURLToPath } from "node:url";

const from = fileURLToPath(new URL("../src/console/", import.meta.url));
const to = fileURLToPath(new URL("../dist/console/", import.meta.url));
rmSync(to, { recursive: true, force: true });
mkdirSync(to, { recursive: true });
cpSync(from, to, { recursive: true, filter: (src) => !src.endsWith(".ts") });
