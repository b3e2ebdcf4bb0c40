# One image for the API, the workers, the mocks and the scenario runner (docker-compose.local.yml).
# Node 24 runs the TypeScript sources directly (type stripping), so there is no build step;
# only production dependencies are installed.
FROM node:24-bookworm-slim
WORKDIR /app
ENV NODE_ENV=production
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --no-audit --no-fund
COPY src ./src
COPY mocks ./mocks
COPY harness ./harness
COPY scenarios ./scenarios
COPY dev ./dev
# The scenario runner writes its report folder here; a worker fills Node's compile cache
# (src/worker/nodeFlags.ts) on its first start, so that later starts skip type stripping.
RUN mkdir -p reports node_modules/.cache/node-compile-cache && chown node:node reports node_modules/.cache/node-compile-cache
USER node
EXPOSE 8080
CMD ["npm", "run", "worker"]
