#!/usr/bin/env node
// Stage 1 and 3 costs per request: canonical path and bearer parsing, per second.
import { canonicalTarget } from "../../dist/core/path.js";
import { parseBearer } from "../../dist/core/bearer.js";
import { measure, table } from "./_measure.mjs";

const rows = [
  measure("canonical path, clean (/v1/chat/completions)", () => canonicalTarget("/v1/chat/completions")),
  measure("canonical path, messy (/v1//x/./%6Dodels/../models/?a=1)", () => canonicalTarget("/v1//x/./%6Dodels/../models/?a=1")),
  measure("bearer parsing", () => parseBearer("Bearer tg_zgN3VCxl3_vUcSUE1SwOt_w-oF7KM3XoFlAgy1VPoaw")),
];
console.log(table("Request parsing", rows));
