import { decodeAttributes } from "../keys.js";
import type { OwnerRecord } from "./types.js";

/** An owner row of either store (`tollgate_owners`) as an {@link OwnerRecord}. */
export function ownerFromRow(row: Readonly<Record<string, unknown>>): OwnerRecord {
  return {
    type: String(row.type),
    id: String(row.id),
    principal: String(row.principal),
    attributes: decodeAttributes(String(row.attributes)),
    createdAt: Number(row.created_at),
    ...(row.upstream === null || row.upstream === undefined ? {} : { upstream: String(row.upstream) }),
  };
}
