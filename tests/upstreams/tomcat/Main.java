// Upstream for the hallpass upstream-reading suite (tests/upstreams/run_suite.py): an
// embedded Tomcat 10 (Debian's libtomcat10-java, jars in /usr/share/java) with default
// connector settings. Tomcat strips `;params` from every path segment and then resolves
// dot segments, so `/public/..;/admin/users` is served by the /admin servlet.
//
//   RECORD_FILE=... java -cp <tomcat jars>:target/upstreams/tomcat Main PORT   (or env PORT)

import java.io.File;
import java.io.FileWriter;
import java.io.IOException;
import java.io.Writer;
import java.nio.file.Files;

import jakarta.servlet.http.HttpServlet;
import jakarta.servlet.http.HttpServletRequest;
import jakarta.servlet.http.HttpServletResponse;

import org.apache.catalina.Context;
import org.apache.catalina.startup.Tomcat;

public class Main {
    static String recordFile;

    static String json(String s) {
        if (s == null) {
            return "null";
        }
        StringBuilder b = new StringBuilder("\"");
        for (char c : s.toCharArray()) {
            if (c == '"' || c == '\\') {
                b.append('\\').append(c);
            } else if (c < 0x20) {
                b.append(String.format("\\u%04x", (int) c));
            } else {
                b.append(c);
            }
        }
        return b.append('"').toString();
    }

    static synchronized void record(HttpServletRequest req, String effectJson) throws IOException {
        String path = req.getServletPath() + (req.getPathInfo() == null ? "" : req.getPathInfo());
        String line = "{\"case\":" + json(req.getHeader("x-case")) + ",\"upstream\":\"tomcat\",\"method\":"
                + json(req.getMethod()) + ",\"path\":" + json(path) + ",\"request_uri\":" + json(req.getRequestURI())
                + ",\"effect\":" + effectJson + "}\n";
        try (Writer w = new FileWriter(recordFile, true)) {
            w.write(line);
        }
    }

    static class Area extends HttpServlet {
        private final String area;

        Area(String area) {
            this.area = area;
        }

        @Override
        protected void doGet(HttpServletRequest req, HttpServletResponse resp) throws IOException {
            String page = req.getPathInfo() == null ? "/" : req.getPathInfo();
            record(req, "{\"area\":" + json(area) + ",\"page\":" + json(page) + "}");
            resp.setContentType("application/json");
            resp.getWriter().write("{\"area\":" + json(area) + ",\"page\":" + json(page) + "}");
        }
    }

    public static void main(String[] args) throws Exception {
        String port = args.length > 0 ? args[0] : System.getenv("PORT");
        recordFile = System.getenv("RECORD_FILE");
        if (port == null || recordFile == null) {
            System.err.println("usage: RECORD_FILE=... java Main PORT");
            System.exit(2);
        }
        File base = Files.createTempDirectory("hallpass-tomcat").toFile();
        Tomcat tomcat = new Tomcat();
        tomcat.setBaseDir(base.getAbsolutePath());
        tomcat.setPort(Integer.parseInt(port));
        tomcat.getConnector().setProperty("address", "127.0.0.1");
        Context ctx = tomcat.addContext("", base.getAbsolutePath());
        Tomcat.addServlet(ctx, "public", new Area("public"));
        ctx.addServletMapping("/public/*", "public");
        Tomcat.addServlet(ctx, "admin", new Area("admin"));
        ctx.addServletMapping("/admin/*", "admin");
        tomcat.start();
        System.out.println("tomcat upstream on " + port);
        tomcat.getServer().await();
    }
}
