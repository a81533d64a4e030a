package fiboserver.opensearch;

import java.io.IOException;
import java.io.InputStream;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.Map;
import org.opensearch.common.settings.Settings;
import org.opensearch.http.HttpServerTransport;
import org.opensearch.node.InternalSettingsPreparer;
import org.opensearch.node.Node;
import org.opensearch.transport.Netty4Plugin;

/**
 * One OpenSearch node inside this JVM for the log tests (issue 19): the real engine
 * judges the index template, the bulk requests and the saved searches' queries.
 *
 * <p>Usage: {@code java -cp <jars> fiboserver.opensearch.Launcher <home dir>}. The node
 * listens on 127.0.0.1 on a port the kernel picks (no race with other tests for a
 * "free" port), prints {@code OPENSEARCH_HTTP_PORT=<port>} once it answers, and closes
 * itself when its stdin closes, so a test runner that dies cannot leave it behind.
 */
public final class Launcher {

    private Launcher() {}

    /**
     * Node's constructor that takes plugin classes is protected: the distribution loads
     * plugins from a plugins/ directory, an embedded node passes them from the classpath.
     */
    static final class EmbeddedNode extends Node {
        EmbeddedNode(Settings settings) {
            super(
                    InternalSettingsPreparer.prepareEnvironment(
                            settings, Map.of(), null, () -> "fiboserver-test"),
                    // netty4 is the HTTP server (and the transport) of the distribution.
                    List.of(Netty4Plugin.class),
                    true);
        }
    }

    public static void main(String[] args) throws Exception {
        if (args.length != 1) {
            System.err.println("usage: Launcher <home dir>");
            System.exit(2);
        }
        Path home = Path.of(args[0]).toAbsolutePath();
        Files.createDirectories(home.resolve("data"));
        Settings settings =
                Settings.builder()
                        .put("path.home", home.toString())
                        .put("path.data", home.resolve("data").toString())
                        .put("path.logs", home.resolve("logs").toString())
                        .put("cluster.name", "fiboserver-test")
                        .put("node.name", "fiboserver-test")
                        // One node: no discovery, no bootstrap checks for production mode.
                        .put("discovery.type", "single-node")
                        .put("network.host", "127.0.0.1")
                        .put("http.port", "0")
                        .put("transport.port", "0")
                        // A shared CI disk may be fuller than the 85% watermark: shards
                        // must still be allocated, or every index stays red.
                        .put("cluster.routing.allocation.disk.threshold_enabled", false)
                        .build();
        Node node = new EmbeddedNode(settings);
        node.start();
        int port =
                node.injector()
                        .getInstance(HttpServerTransport.class)
                        .boundAddress()
                        .publishAddress()
                        .getPort();
        System.out.println("OPENSEARCH_HTTP_PORT=" + port);
        System.out.flush();
        waitForEof(System.in);
        node.close();
        // Netty and OpenSearch threads are non-daemon: end the JVM explicitly.
        System.exit(0);
    }

    private static void waitForEof(InputStream in) throws IOException {
        byte[] buf = new byte[256];
        while (in.read(buf) >= 0) {
            // Nothing to read: stdin only says when the test runner is gone.
        }
    }
}
