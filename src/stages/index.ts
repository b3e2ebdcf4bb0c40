/** The pipeline, in order: each actionable state is routed to exactly one of these. */
import { chunkDocument } from "./chunk.ts";
import { embedChunks } from "./embed.ts";
import { finishDocument } from "./finish.ts";
import { reconcileParse } from "./parseIntake.ts";
import type { PipelineServices } from "./services.ts";
import { submitParse } from "./submitParse.ts";
import type { Stage } from "../worker/stage.ts";
import { validateParse } from "./validate.ts";

export const PIPELINE_STAGES: readonly Stage<PipelineServices>[] = [submitParse, reconcileParse, validateParse, chunkDocument, embedChunks, finishDocument];
