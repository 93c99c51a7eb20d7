// Builds the dashboard into dist/, which inspector/build.rs embeds into the binary.
// Relative asset URLs (base './') and hash routes keep the page working under any
// path prefix (a reverse proxy), and every file stays under dist/.
import { defineConfig } from "vite";

const target = process.env.GLASSLOOP_URL || "http://127.0.0.1:7070";

export default defineConfig({
  base: "./",
  build: {
    outDir: "dist",
    emptyOutDir: true,
    assetsDir: "assets",
    target: "es2022",
    sourcemap: false,
    reportCompressedSize: true,
    // One small bundle: no lazy chunks to fetch (and embed) separately.
    modulePreload: { polyfill: false },
  },
  server: {
    // `npm run dev` against a running inspector: GLASSLOOP_URL=http://127.0.0.1:PORT npm run dev
    proxy: { "/api": { target, changeOrigin: false }, "/healthz": target },
  },
});
